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
/// count comes from `heads`, the file's metadata, or the width's preset. BEiT's layer scales and
/// relative position bias tables, when the file has them, turn those options on and are loaded
/// (`beitOptions`); the bias is for the `imgSize` input (default: the pos_embed grid's).
func segmenterFromWeights(_ file: CheckpointFile, heads: Int?, imgSize: Int? = nil) throws -> Segmenter {
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
    let beit = try beitOptions(file, depth: depth, heads: h, patch: p, window: (imgSize ?? grid * p) / p)
    // A backbone fine-tuned with global pooling (this tool's files of such backbones) keeps its final
    // norm as `fc_norm`; mmseg's files have `ln1` or none.
    let pooling: Pooling = t["backbone.fc_norm.weight"] != nil ? .avg : .cls
    var config = ViTConfig(imgSize: grid * p, patchSize: p, embedDim: d, depth: depth, numHeads: h, mlpHidden: hidden,
                           pooling: pooling)
    config.beit = beit.options
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
        // mmseg's neck has upsample_4x exactly when its rescales are (4, 2, 1, 0.5), else (2, 1, 0.5, 0.25).
        let rescales = t["neck.upsample_4x.0.weight"] != nil ? Feature2Pyramid.defaultRescales : Feature2Pyramid.coarseRescales
        model = UperNetSegmenter(backbone: SegmentationBackbone(vit: vit), classes: classes, channels: channels, auxChannels: aux,
                                 rescales: rescales)
    }
    let known = Set(model.params.specs.map(\.name))
    let extras = t.keys.filter { !known.contains($0) && !$0.hasSuffix(".attn.relative_position_index") }.sorted()
    guard extras.isEmpty else {
        throw PathError(src, "has \(extras.count) entries this segmenter does not have (\(extras.prefix(3).joined(separator: ", "))\(extras.count > 3 ? ", ..." : ""))")
    }
    // mmseg's MAE has no final norm (final_norm False): the ViT's unused `norm` (mmseg `backbone.ln1`) may be absent.
    try loadParameters(model.params, from: t.filter { !beit.zeroTablesResized.contains($0.key) }, source: src,
                       optional: beit.zeroTablesResized.union(["backbone.ln1.weight", "backbone.ln1.bias"]))
    return model
}

/// The BEiT options an mmseg MAE state dict implies: layer scale when its layers have gamma_1 /
/// gamma_2, the relative position bias when they have tables ((2 W - 1)^2 + 3, heads), for a
/// `window` x `window` grid of `patch`-pixel patches. A table made for another window is resized as mmseg's
/// resize_rel_pos_embed only when it is all zeros (which that resize keeps zero: the new model's
/// zero tables, returned in `zeroTablesResized`, are not loaded); a trained one is refused. A stored
/// relative_position_index must be BEiT's for the table's window (it is recomputed, not read).
func beitOptions(_ file: CheckpointFile, depth: Int, heads: Int, patch: Int, window: Int) throws
    -> (options: BEiTOptions?, zeroTablesResized: Set<String>) {
    let t = file.tensors, src = file.source
    func present(_ suffix: String) throws -> Bool {
        let layers = (0..<depth).filter { t["backbone.layers.\($0).\(suffix)"] != nil }
        guard layers.isEmpty || layers.count == depth else {
            throw PathError(src, "has backbone.layers.i.\(suffix) for layers \(layers) only, not all \(depth)")
        }
        return !layers.isEmpty
    }
    let layerScale = try present("gamma_1") && present("gamma_2")
    guard try present("attn.relative_position_bias_table") else {
        return (layerScale ? BEiTOptions(layerScale: 1) : nil, [])
    }
    let target = RelPosBiasSize(windowHeight: window, windowWidth: window, heads: heads)
    var resized: Set<String> = []
    for i in 0..<depth {
        let key = "backbone.layers.\(i).attn.relative_position_bias_table", table = t[key]!
        guard table.shape.count == 2, table.shape[1] == heads, let side = RelPosBiasSize.squareWindow(tableRows: table.shape[0]) else {
            throw PathError(src, "has \(key) of shape \(table.shape), not ((2 W - 1)^2 + 3, \(heads) heads) for a square W x W window")
        }
        if let index = t["backbone.layers.\(i).attn.relative_position_index"] {
            let expected = RelPosBiasSize(windowHeight: side, windowWidth: side, heads: heads).index()
            guard index.shape == [side * side + 1, side * side + 1], index.floats.map({ Int32($0) }) == expected else {
                throw PathError(src, "has a backbone.layers.\(i).attn.relative_position_index that is not BEiT's for its \(side) x \(side) table")
            }
        }
        guard side != window else { continue }
        guard table.floats.allSatisfy({ $0 == 0 }) else {
            throw PathError(src, "has \(key) of \(table.shape[0]) rows for a \(side) x \(side) patch grid, but the model at this input size needs \(target.tableRows) rows (\(window) x \(window)); resizing a trained table (mmseg's resize_rel_pos_embed) is not implemented, so evaluate at --img-size \(side * patch)")
        }
        resized.insert(key)
    }
    return (BEiTOptions(layerScale: layerScale ? 1 : nil, relativePositionWindow: window), resized)
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
    let model = try segmenterFromWeights(file, heads: o.heads, imgSize: o.imgSize)
    model.backbone.vit.precision = o.precision
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
    let variant = o.precision.variant("eval-only")
    let run = TransferRun(dir: segmentationRunsRoot(o.outDir).appendingPathComponent(TransferRun.folderName(variant: variant))
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
                            variant: variant, precision: o.precision, seed: 0, train: 0,
                            checks: ["evaluated \(weights.lastPathComponent) as given (\(model is LinearSegmenter ? "linear head" : "UperNet"), \(config.depth) blocks, width \(config.embedDim), out indices \(model.backbone.outIndices))",
                                     "\(o.slide ? "slide \(size)/\(inference.stride)" : "whole") inference on the keep-ratio resize to (\(4 * size), \(size))",
                                     beitSummary(config.beit)] + o.precision.denseChecks,
                            timings: ["eval_s": score.seconds, "total_s": elapsed(since: start),
                                      "eval_images_per_s": Double(score.images) / max(score.seconds, 1e-9)],
                            epochs: 0)
    say("\(weights.lastPathComponent): mIoU \(String(format: "%.2f", score.result.mIoU)) -> \(run.dir.path)", o.verbose)
    return run
}

/// What the evaluated backbone applies of BEiT's extras, for metrics.json's checks.
func beitSummary(_ options: BEiTOptions?) -> String {
    guard let options else { return "no BEiT layer scale or relative position bias in the weights" }
    let bias = options.relativePositionWindow.map { "relative position bias (\($0) x \($0) window)" } ?? "no relative position bias"
    return "BEiT extras from the weights: \(options.layerScale != nil ? "layer scale" : "no layer scale"), \(bias)"
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
