import Foundation
import MAEData
import MAEDense
import MAEDistributed
import MAEFormats
import MAEJSON
import MAEKernels
import MAEMetrics
import MAEModels

/// `mae-eval segment` options.
public struct SegmentOptions: Sendable {
    public var checkpoints: [URL] = []
    public var baseline: URL?
    /// upernet | linear; nil: the task's (with no task either: both, the shipped Shapes tasks).
    public var head: String?
    public var task: String?
    public var trainImages: URL?, trainLabels: URL?, valImages: URL?, valLabels: URL?
    public var numClasses: Int?
    public var reduceZeroLabel = false
    /// The training crop and the model's input size, instead of the task's `dataset.crop`.
    public var imgSize: Int?
    public var epochs: Int?
    public var seeds: [UInt64]?
    public var resume = false
    public var outDir = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    /// The report; nil: none.
    public var report: URL?
    public var heads: Int?
    public var threads: Int?
    /// The ViT backbone's arithmetic (`--precision`): bf16 runs the backbone's linear layers on bf16
    /// inputs (neck and heads stay fp32) and is its own variant (`Precision.variant`).
    public var precision = Precision.fp32
    public var verbose = true
    /// `--eval-only --weights W`: evaluate an mmseg-layout UperNet (safetensors or mmengine .pth).
    public var evalOnly = false
    public var weights: URL?
    public var slide = false

    public init() {}

    /// Where the report goes by default: `Reports/segmentation.md` for the default runs folder, else
    /// `OUT_DIR/segmentation.md`.
    public static func defaultReportPath(runs: String) -> String {
        runs == TransferOptions.defaultRunsPath ? "Reports/segmentation.md" : (runs as NSString).appendingPathComponent("segmentation.md")
    }
}

/// One line of a segmentation run's `log.jsonl`.
public struct SegmentEpoch: EpochLine, Sendable, Equatable {
    public var epoch: Int
    public var trainLoss: Double
    public var decodeLoss: Double?
    public var auxLoss: Double?
    public var lr: Double
    public var imagesPerSecond: Double
    public var seconds: Double
    /// The backbone's arithmetic ("fp32", "bf16"); absent in logs written before it was recorded.
    public var precision: String?

    enum CodingKeys: String, CodingKey {
        case epoch, trainLoss = "train_loss", decodeLoss = "decode_loss", auxLoss = "aux_loss", lr
        case imagesPerSecond = "images_per_s", seconds, precision
    }
}

/// The resume state kept in a segmentation run's checkpoint.
struct SegmentState: Codable, Equatable {
    var seed: UInt64
    var checkpointHash: String
    var recipe: String
    var loop: LoopState
}

/// The folder of segmentation run folders under an out dir (so the segmentation report holds only them).
public func segmentationRunsRoot(_ outDir: URL) -> URL { outDir.appendingPathComponent("segmentation") }

/// Trains and evaluates (or, with `evalOnly`, only evaluates) segmenters; returns the run folders.
/// With no task, head or data given: UperNet and the linear head on the Shapes scenes, each on the
/// shipped MAE and supervised backbones.
public func runSegment(_ o: SegmentOptions) throws -> [TransferRun] {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    try prepareOutputFolder(o.outDir, flag: "--out-dir")
    if let report = o.report { try prepareReportOutput(report, flag: "--report") }
    if o.evalOnly { return [try evaluateWeights(o)] }
    guard o.weights == nil else { throw TaskError.badArgument("--weights is for --eval-only") }
    let tasks: [String]
    switch (o.task, o.head) {
    case let (task?, _): tasks = [task]
    case (nil, "upernet"?): tasks = ["shapes-segment"]
    case (nil, "linear"?): tasks = ["shapes-segment-linear"]
    case (nil, let head?): throw TaskError.badArgument("--head must be upernet or linear, not \(head)")
    case (nil, nil): tasks = ["shapes-segment", "shapes-segment-linear"]
    }
    var transfer = TransferOptions()
    transfer.checkpoints = o.checkpoints
    transfer.baseline = o.baseline
    let backbones = try transfer.backbones()
    var runs: [TransferRun] = []
    for name in tasks {
        var spec = try SegmentSpec.load(name)
        try apply(o, to: &spec)
        let (train, val) = try datasets(spec, o)
        for b in backbones {
            let backbone = try loadBackbone(b, imgSize: spec.dataset.crop, heads: o.heads, precision: o.precision)
            for seed in spec.seeds {
                runs.append(try segmentOne(spec: spec, backbone: backbone, train: train, val: val, seed: seed, o: o))
            }
        }
    }
    if let report = o.report, Distributed.world.isMain { try writeReport(runs: segmentationRunsRoot(o.outDir), to: report) }
    return runs
}

/// The flags that change a spec.
func apply(_ o: SegmentOptions, to spec: inout SegmentSpec) throws {
    if let head = o.head {
        guard ["upernet", "linear"].contains(head) else { throw TaskError.badArgument("--head must be upernet or linear, not \(head)") }
        spec.head.type = head
    }
    if let n = o.numClasses { spec.dataset.numClasses = n; spec.dataset.classNames = nil }
    if let folder = o.trainImages { spec.dataset.name = folder.path }   // the user's data, not the task's
    if o.reduceZeroLabel { spec.dataset.reduceZeroLabel = true }
    if let s = o.imgSize { spec.dataset.crop = s }
    if let e = o.epochs {
        guard e > 0 else { throw TaskError.badArgument("--epochs must be positive") }
        spec.recipe.epochs = e
        spec.recipe.warmupEpochs = min(spec.recipe.warmupEpochs, Double(e))
    }
    if let seeds = o.seeds {
        guard !seeds.isEmpty else { throw TaskError.badArgument("--seeds must list at least one seed") }
        spec.seeds = seeds
    }
    try spec.validate()
}

/// Train and val image/label folders: the flags' (all four together), else the task's; the Shapes
/// scenes are generated on first use.
func datasets(_ spec: SegmentSpec, _ o: SegmentOptions) throws -> (train: SegmentationDataset, val: SegmentationDataset) {
    let r = spec.dataset.reduceZeroLabel
    switch (o.trainImages, o.trainLabels, o.valImages, o.valLabels) {
    case let (ti?, tl?, vi?, vl?):
        return (try SegmentationDataset(imageFolder: ti, labelFolder: tl, reduceZeroLabel: r),
                try SegmentationDataset(imageFolder: vi, labelFolder: vl, reduceZeroLabel: r))
    case (nil, nil, nil, nil):
        // Generated once, at the standard counts, when the scenes are not there yet.
        if spec.dataset.generate == "shapes", !FileManager.default.fileExists(atPath: spec.resolve(spec.dataset.trainImages).path) {
            try rankZeroFirst { try ShapesDataset.ensure(at: spec.rootURL, size: 32) }
        }
        let d = spec.dataset
        return (try SegmentationDataset(imageFolder: spec.resolve(d.trainImages), labelFolder: spec.resolve(d.trainLabels), reduceZeroLabel: r),
                try SegmentationDataset(imageFolder: spec.resolve(d.valImages), labelFolder: spec.resolve(d.valLabels), reduceZeroLabel: r))
    default:
        throw TaskError.badArgument("pass --train-images, --train-labels, --val-images and --val-labels together")
    }
}

/// The segmenter a spec describes on a loaded backbone (with the spec's BEiT options added), heads
/// initialised from `seed`.
func makeSegmenter(_ spec: SegmentSpec, vit loaded: VisionTransformer, seed: UInt64) throws -> Segmenter {
    let vit = try spec.backbone?.options(window: spec.dataset.crop / loaded.config.patchSize)
        .map { try loaded.withBEiTOptions($0) } ?? loaded
    let depth = vit.config.depth
    let model: Segmenter
    if spec.head.type == "linear" {
        let k = spec.head.blocks ?? 1
        guard k <= depth else { throw TaskError.badArgument("head.blocks \(k) is more than the backbone's \(depth) blocks") }
        model = try LinearSegmenter(backbone: SegmentationBackbone(vit: vit, outIndices: Array((depth - k)..<depth)),
                                    classes: spec.dataset.numClasses)
    } else {
        let aux = spec.head.auxChannels ?? 256
        let upernet = UperNetSegmenter(backbone: SegmentationBackbone(vit: vit), classes: spec.dataset.numClasses,
                                       channels: spec.head.channels ?? vit.config.embedDim, auxChannels: aux > 0 ? aux : nil,
                                       rescales: spec.head.rescales ?? Feature2Pyramid.defaultRescales)
        upernet.auxiliaryWeight = Float(spec.head.auxWeight ?? 0.4)
        vit.dropPath = Float(spec.recipe.dropPath)
        model = upernet
    }
    model.initializeHeads(seed: seed)
    return model
}

func segmentOne(spec: SegmentSpec, backbone: LoadedBackbone, train: SegmentationDataset, val: SegmentationDataset,
                seed: UInt64, o: SegmentOptions) throws -> TransferRun {
    let total = Date(), r = spec.recipe, crop = spec.dataset.crop, verbose = o.verbose
    let vit = backbone.model
    let patch = vit.config.patchSize
    guard crop % patch == 0 else { throw TaskError.badArgument("the crop \(crop) is not a multiple of the backbone's patch \(patch)") }
    let model = try makeSegmenter(spec, vit: vit, seed: seed)
    let groups = model.groups(layerDecay: Float(r.layerDecay))
    let optimizer = AdamW(count: model.params.layout.totalCount, groups: groups, beta1: Float(r.betas[0]), beta2: Float(r.betas[1]),
                          weightDecay: Float(r.weightDecay))
    let schedule = Schedule(baseLR: Float(r.lr), minLR: Float(r.minLR), warmupEpochs: r.warmupEpochs, epochs: Double(r.epochs),
                            decay: .poly(power: r.polyPower))
    let world = Distributed.world
    let loader = DataLoader(denseSource: SegmentationTrainSource(dataset: train, pipeline: spec.pipeline), batchSize: r.batchSize,
                            seed: seed, shuffle: true, dropLast: train.count >= r.batchSize, rank: world.rank, of: world.size)
    guard loader.batchCount > 0 else { throw TaskError.badArgument("the training set has no images") }
    let variant = o.precision.variant(spec.head.type == "linear" ? "linear, last \(spec.head.blocks ?? 1) blocks" : "upernet")
    let run = TransferRun(root: segmentationRunsRoot(o.outDir), task: spec.name, variant: variant, backbone: backbone, seed: seed)
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    let checkpointURL = run.checkpoint
    let recipe = spec.recipeSummary
    var resumed: LoopState?
    if o.resume, FileManager.default.fileExists(atPath: checkpointURL.path) {
        let state = try loadSegmenterCheckpoint(model, optimizer: optimizer, from: checkpointURL)
        guard state.seed == seed, state.checkpointHash == backbone.hash, state.recipe == recipe else {
            throw TaskError.badArgument("\(checkpointURL.path) was trained with another seed, backbone or recipe and cannot be resumed with these")
        }
        resumed = state.loop
        say("resuming \(run.dir.path) after \(state.loop.described)", verbose)
    } else if FileManager.default.fileExists(atPath: checkpointURL.path) {
        say("note: starting \(run.dir.path) afresh (pass --resume to continue its checkpoint)", verbose)
    }
    let progress = ProgressLine(epochs: r.epochs, stepsPerEpoch: loader.batchCount, enabled: verbose)
    let label = "\(backbone.stem) \(spec.name)"
    let trainStart = Date()
    var training = TrainingLoop<SegmentEpoch>(
        seed: seed, epochs: r.epochs, schedule: schedule, params: model.params, optimizer: optimizer, groups: groups,
        loader: loader, total: "loss", blame: vit, lrAdvice: "lower recipe.lr", logFile: run.log, progress: progress,
        step: { b, context in
            model.batchShard = b.shard
            return b.images.withUnsafeBufferPointer {
                model.trainStep(images: $0.baseAddress!, batch: b.count, height: crop, width: crop, labels: b.targets,
                                seed: context.stream.state)
            }
        },
        record: { summary in
            let entry = SegmentEpoch(epoch: summary.epoch, trainLoss: summary.terms["loss"] ?? .nan, decodeLoss: summary.terms["decode"],
                                     auxLoss: summary.terms["aux"], lr: Double(summary.lastLR),
                                     imagesPerSecond: summary.imagesPerSecond, seconds: summary.seconds,
                                     precision: o.precision.rawValue)
            progress.note("\(label) epoch \(summary.epoch)/\(r.epochs): loss \(String(format: "%.4f", entry.trainLoss)), " +
                          "\(String(format: "%.1f", entry.imagesPerSecond)) images/s, \(String(format: "%.1f", entry.seconds)) s")
            return entry
        })
    training.stage = "segmentation "
    training.checkpoint = (checkpointURL, { loop in
        try saveSegmenter(model, to: checkpointURL, optimizer: optimizer,
                          state: SegmentState(seed: seed, checkpointHash: backbone.hash, recipe: recipe, loop: loop))
    })
    // Under MPI every BatchNorm2d of the heads normalises with the global batch (SyncBN).
    let log = try SyncBatchNorm.$ranks.withValue(training.dataParallel?.world) { try training.run(from: resumed) }
    let trainSeconds = elapsed(since: trainStart)
    if world.isMain { try saveSegmenter(model, to: run.dir.appendingPathComponent("segmenter.safetensors"), optimizer: nil, state: nil) }
    let inference = SegmentationInference(scale: (spec.dataset.scale[0], spec.dataset.scale[1]), slide: spec.recipe.testMode == "slide",
                                          crop: crop, stride: spec.dataset.stride, patch: patch)
    let score = try evaluateSegmenter(model, data: val, inference: inference, numClasses: spec.dataset.numClasses, into: run.dir,
                                      progress: ProgressLine(enabled: verbose))
    var checks = [
        spec.head.type == "linear"
            ? "linear probe: the backbone is frozen in eval mode; its final norm on blocks \(model.backbone.outIndices), BN + 1x1 conv train"
            : "UperNet on blocks \(model.backbone.outIndices) (mmseg's MAE out_indices rule), Feature2Pyramid strides \((model as? UperNetSegmenter)?.neck.levelStrides(inputStride: patch) ?? []), layer decay \(r.layerDecay) (mmseg's BEiT/MAE rule)",
        "train pipeline: RandomResize \(spec.dataset.ratioRange) of \(spec.dataset.scale), RandomCrop \(crop) (cat_max_ratio \(spec.dataset.catMaxRatio)), flip 0.5, PhotoMetricDistortion, pad 0 / 255",
        "evaluation: \(inference.slide ? "slide \(crop)/\(spec.dataset.stride)" : "whole") on the keep-ratio resize, logits resized to the label size; the last epoch is reported",
        spec.backbone.flatMap { $0.options(window: crop / patch) }.map { o in
            "BEiT options on the backbone: \(o.relativePositionWindow.map { "relative position bias (\($0) x \($0) window, tables from zero)" } ?? "no relative position bias")\(o.layerScale.map { ", layer scale from \($0)" } ?? ", no layer scale") (mmseg's MAE init)"
        } ?? "no BEiT relative position bias or layer scale on the backbone (the spec's `backbone` section turns them on)",
    ]
    checks += o.precision.denseChecks
    if resumed != nil { checks.append("resumed from the run's checkpoint") }
    try writeSegmentMetrics(run: run, spec: spec, score: score, backbone: (backbone.url.path, backbone.hash, backbone.method, backbone.role),
                            variant: variant, precision: o.precision, seed: seed, train: train.count, checks: checks,
                            timings: ["train_s": trainSeconds, "eval_s": score.seconds, "total_s": elapsed(since: total),
                                      "train_images_per_s": log.last?.imagesPerSecond ?? 0,
                                      "eval_images_per_s": Double(score.images) / max(score.seconds, 1e-9)],
                            epochs: r.epochs)
    say("\(label): mIoU \(String(format: "%.2f", score.result.mIoU)), mAcc \(String(format: "%.2f", score.result.mAcc)), " +
        "aAcc \(String(format: "%.2f", score.result.aAcc)) -> \(run.dir.path)", verbose)
    return run
}

/// Writes `metrics.json`: mIoU, mAcc, aAcc and per-class IoU / Acc (percent, null where undefined)
/// by class name, with what the report needs to identify the run.
func writeSegmentMetrics(run: TransferRun, spec: SegmentSpec, score: SegmentationScore,
                         backbone: (path: String, hash: String, method: String, role: String), variant: String,
                         precision: Precision, seed: UInt64,
                         train: Int, checks: [String], timings: [String: Double], epochs: Int) throws {
    let res = score.result
    for (name, v) in [("mIoU", res.mIoU), ("mAcc", res.mAcc), ("aAcc", res.aAcc)] where !v.isFinite {
        throw TaskError.badArgument("\(name) is \(nonFiniteName(v)) for \(run.dir.path): the val labels hold no class of the task")
    }
    guard Distributed.world.isMain else { return }
    func number(_ v: Double) -> JSONValue { v.isFinite ? .double(v) : .null }
    let names = spec.classNames
    let perClass = jsonObject(names.indices.map { k in
        (names[k], jsonObject([("IoU", number(res.iou[k] * 100)), ("Acc", number(res.acc[k] * 100))]))
    })
    let object: [(String, JSONValue)] = [
        ("task", .string(spec.name)), ("protocol", .string("segment")), ("variant", .string(variant)),
        ("precision", .string(precision.rawValue)),
        ("checkpoint", .string(backbone.path)), ("checkpoint_hash", .string(backbone.hash)), ("method", .string(backbone.method)),
        ("role", .string(backbone.role)), ("seed", .int(Int(seed))),
        ("mIoU", .double(res.mIoU)), ("mAcc", .double(res.mAcc)), ("aAcc", .double(res.aAcc)), ("per_class", perClass),
        ("num_classes", .int(spec.dataset.numClasses)), ("reduce_zero_label", .bool(spec.dataset.reduceZeroLabel)),
        ("recipe", .string(spec.recipeSummary)),
        ("dataset", .string("\(spec.dataset.name), \(train) train / \(score.images) val images, \(spec.dataset.numClasses) classes")),
        ("val_images", .int(score.images)), ("epochs", .int(epochs)),
        ("protocol_checks", .array(checks.map { .string($0) })),
        ("timings", jsonObject(timings.sorted { $0.key < $1.key }.map { ($0.key, number($0.value)) })),
        ("created", .string(timestamp())), ("mae_eval_version", .string(MAEEvalVersion.described)),
    ]
    try writeAtomically(Data(jsonObject(object).serialized().utf8), to: run.metrics)
}

/// A JSON object with these members, in this order.
func jsonObject(_ pairs: [(String, JSONValue)]) -> JSONValue {
    .object(JSONObject(pairs.map { (key: $0.0, value: $0.1) }))
}

// MARK: - Checkpoints in mmseg's layout

/// Saves the segmenter's store under mmseg's names (safetensors, F32), with the ViT config and head
/// sizes in the metadata; with `optimizer` and `state` also AdamW's moments (`optim.*`) and the loop's
/// position, for a resume.
func saveSegmenter(_ model: Segmenter, to url: URL, optimizer: Optimizer?, state: SegmentState?) throws {
    var meta = ["format": "mae-eval segmenter (mmsegmentation parameter names)", "heads": String(model.backbone.vit.config.numHeads),
                "out_indices": model.backbone.outIndices.map(String.init).joined(separator: ",")]
    if let state { meta["segment_state"] = String(decoding: try JSONEncoder().encode(state), as: UTF8.self) }
    let p = model.params
    var file = SafeTensors(tensors: p.specs.map { ($0.name, StoredTensor(shape: $0.shape, floats: Array(p.value($0.name)))) }, metadata: meta)
    if let optimizer {
        for (key, values) in optimizer.state.sorted(by: { $0.key < $1.key }) {
            file.set("optim." + key, StoredTensor(shape: [values.count], floats: values))
        }
    }
    try file.write(to: url)
}

/// Reads a training checkpoint of `saveSegmenter` into `model` and `optimizer`; returns its state.
func loadSegmenterCheckpoint(_ model: Segmenter, optimizer: Optimizer, from url: URL) throws -> SegmentState {
    let file = try SafeTensors.read(contentsOf: url)
    guard let json = file.metadata["segment_state"], let state = try? JSONDecoder().decode(SegmentState.self, from: Data(json.utf8)) else {
        throw PathError(url.path, "has no segment_state, so it is not a segmentation checkpoint this run can resume")
    }
    try loadParameters(model.params, from: file.tensors, source: url.path, optional: [])
    var moments: [String: [Float]] = [:]
    for (key, current) in optimizer.state {
        guard let t = file.tensors["optim." + key], t.count == current.count else {
            throw PathError(url.path, "lacks the optimizer state optim.\(key)")
        }
        moments[key] = t.floats
    }
    optimizer.state = moments
    return state
}

/// Sets every entry of `params` from `tensors` by name, checking shapes; names in `optional` may be absent.
func loadParameters(_ params: ParameterStore, from tensors: [String: StoredTensor], source: String, optional: Set<String>) throws {
    for spec in params.specs {
        guard let t = tensors[spec.name] else {
            if optional.contains(spec.name) { continue }
            throw PathError(source, "lacks \(spec.name) (shape \(spec.shape)), which the segmenter needs")
        }
        // mmseg stores pos_embed (1, N, D) and cls_token (1, 1, D) as the ViT does; num_batches_tracked as int64 ().
        guard t.count == spec.count, t.shape.reduce(1, *) == spec.count else {
            throw PathError(source, "has \(spec.name) of shape \(t.shape), but the segmenter's is \(spec.shape)")
        }
        try params.set(spec.name, shape: spec.shape, t.floats)
    }
}
