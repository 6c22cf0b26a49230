import Foundation
import MAEData
import MAEDense
import MAEFormats
import MAEJSON
import MAEKernels
import MAEModels

/// Widths of the standard ViT presets and their head counts (ViT-Ti/S/B/L/H).
let presetHeads = [192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16]

/// A segmenter built from an mmsegmentation-layout state dict (mmseg's MAE UperNet, or a file this
/// tool saved): the ViT's shape from the backbone's tensors, the heads' widths and the class count
/// from theirs, out_indices mmseg's defaults (or the file's own, for this tool's files). The head
/// count comes from `heads`, the file's metadata, or the width's preset.
func segmenterFromWeights(_ file: CheckpointFile, heads: Int?) throws -> Segmenter {
    let t = file.tensors, src = file.source
    func shape(_ name: String) throws -> [Int] {
        guard let s = t[name]?.shape else { throw PathError(src, "lacks \(name), so it is not an mmseg MAE segmenter") }
        return s
    }
    let patchShape = try shape("backbone.patch_embed.projection.weight")
    guard patchShape.count == 4, patchShape[1] == 3, patchShape[2] == patchShape[3] else {
        throw PathError(src, "has a backbone.patch_embed.projection.weight of shape \(patchShape), not (D, 3, P, P)")
    }
    let d = patchShape[0], p = patchShape[2]
    let tokens = try shape("backbone.pos_embed").dropLast().last ?? 0
    let grid = Int(Double(tokens - 1).squareRoot())
    guard grid * grid == tokens - 1 else {
        throw PathError(src, "has a pos_embed of \(tokens) rows, not a cls row plus a square grid")
    }
    let layerIndices = Set(t.keys.compactMap { key -> Int? in
        guard key.hasPrefix("backbone.layers.") else { return nil }
        return Int(key.dropFirst("backbone.layers.".count).prefix { $0.isNumber })
    })
    let depth = layerIndices.count
    guard depth > 0, layerIndices == Set(0..<depth) else { throw PathError(src, "has backbone layers \(layerIndices.sorted()), not 0..<depth") }
    let hidden = try shape("backbone.layers.0.ffn.layers.0.0.weight")[0]
    guard let h = heads ?? file.metadata["heads"].flatMap({ Int($0) }) ?? presetHeads[d] else {
        throw TaskError.badArgument("\(src): the head count of a width-\(d) ViT is not in the file and matches no preset; pass --heads")
    }
    try checkIdentityExtras(file, depth: depth)
    // A backbone fine-tuned with global pooling (this tool's files of such backbones) keeps its final
    // norm as `fc_norm`; mmseg's files have `ln1` or none.
    let pooling: Pooling = t["backbone.fc_norm.weight"] != nil ? .avg : .cls
    let config = ViTConfig(imgSize: grid * p, patchSize: p, embedDim: d, depth: depth, numHeads: h, mlpHidden: hidden,
                           pooling: pooling)
    let vit = try VisionTransformer(config: config)
    vit.params.value(pooling == .avg ? "fc_norm.weight" : "norm.weight").update(repeating: 1)
    let classes = try shape("decode_head.conv_seg.weight")[0]
    let model: Segmenter
    if t["decode_head.bn.weight"] != nil {
        let width = try shape("decode_head.bn.weight")[0]
        let saved = file.metadata["out_indices"].map { $0.split(separator: ",").compactMap { Int($0) } }
        let k = width / d
        let indices = saved ?? Array((depth - k)..<depth)
        guard indices.count * d == width else { throw PathError(src, "has a linear head of width \(width) for \(indices.count) blocks of \(d)") }
        model = try LinearSegmenter(backbone: SegmentationBackbone(vit: vit, outIndices: indices), classes: classes)
    } else {
        let channels = try shape("decode_head.conv_seg.weight")[1]
        let aux = t["auxiliary_head.conv_seg.weight"]?.shape[1]
        model = UperNetSegmenter(backbone: SegmentationBackbone(vit: vit), classes: classes, channels: channels, auxChannels: aux)
    }
    let known = Set(model.params.specs.map(\.name))
    let extras = t.keys.filter { !known.contains($0) && !isIdentityExtra($0) }.sorted()
    guard extras.isEmpty else {
        throw PathError(src, "has \(extras.count) entries this segmenter does not have (\(extras.prefix(3).joined(separator: ", "))\(extras.count > 3 ? ", ..." : ""))")
    }
    // mmseg's MAE has no final norm (final_norm False): the ViT's unused `norm` (mmseg `backbone.ln1`) may be absent.
    try loadParameters(model.params, from: t, source: src, optional: ["backbone.ln1.weight", "backbone.ln1.bias"])
    return model
}

/// BEiT's per-layer extras that this backbone keeps as identities: layer scale, the relative position
/// bias table and its index buffer.
func isIdentityExtra(_ name: String) -> Bool {
    name.hasSuffix(".gamma_1") || name.hasSuffix(".gamma_2") || name.hasSuffix(".attn.relative_position_bias_table")
        || name.hasSuffix(".attn.relative_position_index")
}

/// Refuses a file whose layer scales are not all 1 or whose relative position tables are not all 0:
/// this backbone does not apply them, so its predictions would not be mmseg's.
func checkIdentityExtras(_ file: CheckpointFile, depth: Int) throws {
    for i in 0..<depth {
        for (name, identity) in [("gamma_1", Float(1)), ("gamma_2", 1), ("attn.relative_position_bias_table", 0)] {
            let key = "backbone.layers.\(i).\(name)"
            guard let t = file.tensors[key] else { continue }
            if t.floats.contains(where: { $0 != identity }) {
                throw PathError(file.source, "has a trained \(key) (not all \(identity == 1 ? "ones" : "zeros")); BEiT's layer scale and relative position bias are not implemented here, so it cannot be evaluated faithfully")
            }
        }
    }
}

/// `--eval-only --weights W`: one run folder `OUT_DIR/segmentation/eval-only/<stem>-<hash8>` with
/// metrics.json, pred/ and overlays/.
func evaluateWeights(_ o: SegmentOptions) throws -> TransferRun {
    guard let weights = o.weights else { throw TaskError.badArgument("--eval-only needs --weights W") }
    guard let images = o.valImages, let labels = o.valLabels else {
        throw TaskError.badArgument("--eval-only needs --val-images and --val-labels")
    }
    guard let k = o.numClasses else { throw TaskError.badArgument("--eval-only needs --num-classes") }
    let file = try CheckpointFile.open(weights)
    let model = try segmenterFromWeights(file, heads: o.heads)
    guard model.classes == k else {
        throw TaskError.badArgument("\(weights.path) predicts \(model.classes) classes, but --num-classes is \(k)")
    }
    let data = try SegmentationDataset(imageFolder: images, labelFolder: labels, reduceZeroLabel: o.reduceZeroLabel)
    let config = model.backbone.vit.config
    // mmseg's ADE20K test: Resize (2048, 512) keep ratio, slide 512 / 341; the same ratios at other sizes.
    let size = o.imgSize ?? config.imgSize
    let inference = SegmentationInference(scale: (4 * size, size), slide: o.slide, crop: size, stride: max(1, size * 2 / 3),
                                          patch: config.patchSize)
    let hash = try fileHash(weights)
    let run = TransferRun(dir: segmentationRunsRoot(o.outDir).appendingPathComponent("eval-only")
        .appendingPathComponent("\(weights.deletingPathExtension().lastPathComponent)-\(hash.prefix(8))"))
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    let start = Date()
    let score = try evaluateSegmenter(model, data: data, inference: inference, numClasses: k, into: run.dir,
                                      progress: ProgressLine(enabled: o.verbose))
    var spec = try SegmentSpec.parse(evalOnlySpecText(k: k, size: size, stride: inference.stride, slide: o.slide,
                                                      reduceZero: o.reduceZeroLabel), source: "--eval-only")
    spec.dataset.root = images.path
    try writeSegmentMetrics(run: run, spec: spec, score: score, backbone: (weights.path, hash, "unknown", "checkpoint"),
                            variant: "eval-only", seed: 0, train: 0,
                            checks: ["evaluated \(weights.lastPathComponent) as given (\(model is LinearSegmenter ? "linear head" : "UperNet"), \(config.depth) blocks, width \(config.embedDim), out indices \(model.backbone.outIndices))",
                                     "\(o.slide ? "slide \(size)/\(inference.stride)" : "whole") inference on the keep-ratio resize to (\(4 * size), \(size))"],
                            timings: ["eval_s": score.seconds, "total_s": elapsed(since: start),
                                      "eval_images_per_s": Double(score.images) / max(score.seconds, 1e-9)],
                            epochs: 0)
    say("\(weights.lastPathComponent): mIoU \(String(format: "%.2f", score.result.mIoU)) -> \(run.dir.path)", o.verbose)
    return run
}

/// The spec an --eval-only run records (no training fields are used).
func evalOnlySpecText(k: Int, size: Int, stride: Int, slide: Bool, reduceZero: Bool) -> String {
    """
    name: eval-only
    dataset: {name: given folders, root: ., train_images: ., train_labels: ., val_images: ., val_labels: ., num_classes: \(k),
              reduce_zero_label: \(reduceZero), scale: [\(4 * size), \(size)], ratio_range: [1, 1], crop: \(size), stride: \(stride),
              cat_max_ratio: 1}
    head: {type: upernet}
    recipe: {optimizer: adamw, lr: 1, weight_decay: 0, betas: [0.9, 0.999], layer_decay: 1, drop_path: 0, batch_size: 2,
             epochs: 1, warmup_epochs: 0, poly_power: 1, min_lr: 0, test_mode: \(slide ? "slide" : "whole")}
    seeds: [0]
    """
}
