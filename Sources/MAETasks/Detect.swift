// `mae-eval detect`: Mask R-CNN with ViTDet's backbone on each checkpoint, trained through the one
// training loop and evaluated in process with COCO AP; or a detectron2-layout detector evaluated as it is.
import Foundation
import MAECOCO
import MAEData
import MAEDense
import MAEDistributed
import MAEFormats
import MAEJSON
import MAEKernels
import MAEModels

/// What `mae-eval detect` runs.
public struct DetectOptions: Sendable {
    /// Backbones (`--checkpoint`, repeatable) and the one compared against (`--baseline`); none: the shipped pair.
    public var checkpoints: [URL] = []
    public var baseline: URL?
    /// A detection task spec (path or name in `Tasks/`); nil: `shapes-detect`.
    public var task: String?
    /// COCO instances files and image folders overriding the task's (`--train-data`/`--train-images`, ...).
    public var trainData: URL?, trainImages: URL?, valData: URL?, valImages: URL?
    public var imgSize: Int?
    public var epochs: Int?
    public var seeds: [UInt64]?
    /// Continue each run folder's training checkpoint.
    public var resume = false
    public var outDir = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    /// The report refreshed after the runs; nil: none.
    public var report: URL? = URL(fileURLWithPath: DetectOptions.defaultReportPath(runs: TransferOptions.defaultRunsPath))
    /// Attention heads for checkpoints (or `--weights`) that do not say.
    public var heads: Int?
    public var threads: Int?
    /// The ViT backbone's arithmetic (`--precision`): bf16 runs the backbone's linear layers on bf16
    /// inputs (pyramid and heads stay fp32) and is its own variant (`Precision.variant`).
    public var precision = Precision.fp32
    public var verbose = true
    /// `--eval-only --weights W`: evaluate a detectron2-layout detector instead of training.
    public var evalOnly = false
    public var weights: URL?

    public init() {}

    /// `Reports/detection.md` for the default runs folder, `OUT_DIR/detection.md` for another.
    public static func defaultReportPath(runs: String) -> String {
        runs == TransferOptions.defaultRunsPath ? "Reports/detection.md" : (runs as NSString).appendingPathComponent("detection.md")
    }
}

/// A detection run's `metrics.json`: the 12 COCO numbers of boxes and masks by name, in percent, and
/// what produced them.
public struct DetectMetrics: Codable, Sendable {
    public var task: String
    public var evaluation = "detect"
    public var variant = "Mask R-CNN"
    /// The backbone's arithmetic ("fp32", "bf16"); absent in metrics written before it was recorded.
    public var precision: String?
    public var checkpoint: String
    public var checkpointHash: String
    public var method: String
    public var role: String
    public var seed: UInt64
    public var recipe: String
    public var dataset: String
    public var bbox: [String: Double]
    public var segm: [String: Double]
    public var valImages: Int
    public var detections: Int
    public var protocolChecks: [String]
    public var timings: [String: Double]
    public var created: String
    public var maeEvalVersion: String? = MAEEvalVersion.described

    enum CodingKeys: String, CodingKey {
        case task, evaluation = "protocol", variant, precision, checkpoint, checkpointHash = "checkpoint_hash", method, role, seed, recipe
        case dataset, bbox, segm, valImages = "val_images", detections, protocolChecks = "protocol_checks", timings, created
        case maeEvalVersion = "mae_eval_version"
    }
}

/// One epoch of a detection run's `log.jsonl`: each loss term's mean, the total, the lr.
public struct DetectEpoch: EpochLine, Sendable, Equatable {
    public var epoch: Int
    public var loss: Double
    public var terms: [String: Double]
    public var lr: Double
    public var seconds: Double
    /// The backbone's arithmetic ("fp32", "bf16"); absent in logs written before it was recorded.
    public var precision: String?
}

/// The training checkpoint's state beside the weights and AdamW moments.
struct DetectState: Codable, Equatable {
    var seed: UInt64
    var checkpointHash: String
    var config: MaskRCNNConfig
    var loop: LoopState?
}

/// `mae-eval detect`: trains and evaluates one run folder per backbone and seed, or (`evalOnly`)
/// evaluates `weights`; returns the run folders.
public func runDetect(_ o: DetectOptions) throws -> [TransferRun] {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    var spec = try DetectSpec.load(o.task ?? "shapes-detect")
    if let n = o.imgSize {
        guard n >= 16 else { throw TaskError.badArgument("--img-size must be at least 16, not \(n)") }
        spec.dataset.imgSize = n
    }
    if let n = o.epochs {
        guard n > 0 else { throw TaskError.badArgument("--epochs must be positive") }
        spec.recipe.milestones = spec.recipe.milestones.map { $0 * Double(n) / Double(spec.recipe.epochs) }
        spec.recipe.epochs = n
    }
    if let seeds = o.seeds {
        guard !seeds.isEmpty else { throw TaskError.badArgument("--seeds must list at least one seed") }
        spec.seeds = seeds
    }
    if o.evalOnly {
        guard let weights = o.weights else { throw TaskError.badArgument("--eval-only needs --weights W (a detectron2-layout detector)") }
        guard FileManager.default.fileExists(atPath: weights.path) else { throw TaskError.badArgument("\(weights.path): no such file") }
    } else if o.weights != nil {
        throw TaskError.badArgument("--weights is for --eval-only; to train, pass --checkpoint")
    }
    try prepareOutputFolder(o.outDir, flag: "--out-dir")
    if let report = o.report { try prepareReportOutput(report, flag: "--report") }
    let data = try detectionData(spec, o)
    var runs: [TransferRun] = []
    if o.evalOnly, let weights = o.weights {
        runs.append(try evaluateWeights(weights, spec: spec, val: data.val, o: o))
    } else {
        var list = o.checkpoints.map { Backbone(url: $0, role: "checkpoint") }
        if let b = o.baseline { list.append(Backbone(url: b, role: "baseline")) }
        if list.isEmpty {
            list = [Backbone(url: defaultMAECheckpoint, role: "checkpoint"), Backbone(url: defaultSupervisedCheckpoint, role: "baseline")]
        }
        for b in list where !FileManager.default.fileExists(atPath: b.url.path) {
            throw TaskError.badArgument("\(b.url.path): no such checkpoint")
        }
        guard data.train != nil else { throw TaskError.badArgument("training needs train data") }
        for b in list {
            let backbone = try loadDetectionBackbone(b, heads: o.heads)
            for seed in spec.seeds { runs.append(try detectOne(spec: spec, backbone: backbone, data: data, seed: seed, o: o)) }
        }
    }
    // The report holds this task's detection runs only (the runs folder may hold classification runs too).
    if let report = o.report, Distributed.world.isMain { try writeReport(runs: o.outDir.appendingPathComponent(spec.name), to: report) }
    return runs
}

/// A backbone at its own pretraining size (ViTDet resizes pos_embed to the input in every forward).
func loadDetectionBackbone(_ b: Backbone, heads: Int?) throws -> LoadedBackbone {
    try loadBackbone(b, imgSize: nil, heads: heads)
}

/// The val data (and train data, unless evaluating only): the flags' COCO files, else the task's,
/// Shapes generated when the task says so.
func detectionData(_ spec: DetectSpec, _ o: DetectOptions) throws
    -> (train: COCODetectionDataset?, val: COCODetectionDataset, valAnnotations: URL, name: String) {
    let d = spec.dataset
    let flagged = [o.trainData, o.trainImages, o.valData, o.valImages].contains { $0 != nil }
    if !flagged, d.generate == "shapes" { try rankZeroFirst { try ShapesDataset.ensure(at: d.rootURL) } }
    func pair(_ json: URL?, _ images: URL?, _ flag: String, _ specJSON: String, _ specImages: String) throws -> (URL, URL) {
        switch (json, images) {
        case let (j?, i?): return (j, i)
        case (nil, nil): return (d.resolve(specJSON), d.resolve(specImages))
        default: throw TaskError.badArgument("pass --\(flag)-data and --\(flag)-images together")
        }
    }
    let (valJSON, valImages) = try pair(o.valData, o.valImages, "val", d.valAnnotations, d.valImages)
    let val = try COCODetectionDataset(annotations: valJSON, imageFolder: valImages)
    guard val.count > 0 else { throw TaskError.badArgument("\(valJSON.path) lists no images") }
    var train: COCODetectionDataset?
    if !o.evalOnly {
        let (trainJSON, trainImages) = try pair(o.trainData, o.trainImages, "train", d.trainAnnotations, d.trainImages)
        let t = try COCODetectionDataset(annotations: trainJSON, imageFolder: trainImages)
        guard t.count > 0 else { throw TaskError.badArgument("\(trainJSON.path) lists no images") }
        guard t.categoryIds == val.categoryIds else {
            throw TaskError.badArgument("\(trainJSON.path) and \(valJSON.path) have different categories")
        }
        train = t
    }
    return (train, val, valJSON, flagged ? valJSON.deletingLastPathComponent().lastPathComponent : d.name)
}

/// The detector's configuration for a backbone under a task.
func detectorConfig(_ spec: DetectSpec, backbone: ViTConfig, classes: Int) -> MaskRCNNConfig {
    var vit = backbone
    let window = spec.model.windowSize == 0 ? vit.gridSize : spec.model.windowSize
    vit.vitdet = ViTDetOptions(windowSize: window,
                               globalBlocks: spec.model.globalBlocks.isEmpty
                                   ? ViTDetOptions.evenlySpacedGlobalBlocks(depth: vit.depth) : spec.model.globalBlocks,
                               inputSize: spec.dataset.imgSize)
    let heads = ROIHeadConfig(classes: classes, inChannels: spec.model.pyramidChannels, boxConvs: spec.heads.boxConvs,
                              convDim: spec.heads.convDim, fcDim: spec.heads.fcDim, maskConvs: spec.heads.maskConvs)
    return MaskRCNNConfig(backbone: vit, pyramidChannels: spec.model.pyramidChannels, scaleFactors: spec.model.scaleFactors,
                          anchorSizes: spec.model.anchorSizes, aspectRatios: spec.model.aspectRatios, heads: heads,
                          rpnBatchSize: spec.heads.rpnBatchSize, roiBatchSize: spec.heads.roiBatchSize,
                          roiPositiveFraction: spec.heads.roiPositiveFraction, dropPath: Float(spec.model.dropPath))
}

/// A batch's objects as the detector's ground truth (masks over the padded input).
func groundTruth(_ batch: Batch, size: Int) -> [GroundTruth] {
    batch.instances.map { t in
        GroundTruth(boxes: stride(from: 0, to: t.boxes.count, by: 4).map { Box(xyxy: Array(t.boxes[$0..<($0 + 4)])) },
                    classes: t.labels, masks: t.masks, maskHeight: size, maskWidth: size)
    }
}

func detectOne(spec: DetectSpec, backbone: LoadedBackbone,
               data: (train: COCODetectionDataset?, val: COCODetectionDataset, valAnnotations: URL, name: String),
               seed: UInt64, o: DetectOptions) throws -> TransferRun {
    let total = Date(), r = spec.recipe, size = spec.dataset.imgSize
    guard let trainData = data.train else { throw TaskError.badArgument("training needs train data") }
    let config = detectorConfig(spec, backbone: backbone.model.config, classes: trainData.classes.count)
    let model = try MaskRCNN(config)
    model.initializeWeights(seed: seed)
    try model.backbone.loadEncoder(from: backbone.model)
    model.backbone.vit.precision = o.precision
    let groups = model.parameterGroups(layerDecay: Float(r.layerDecay))
    let optimizer = AdamW(count: model.params.layout.totalCount, groups: groups, weightDecay: Float(r.weightDecay))
    let builder = DetectionBatchBuilder.training(trainData, size: size, scale: r.lsjScale[0]...r.lsjScale[1])
    let world = Distributed.world
    let loader = DataLoader(builder: builder, batchSize: r.batchSize, seed: seed, shuffle: true,
                            dropLast: trainData.count >= r.batchSize, rank: world.rank, of: world.size)
    let steps = loader.batchCount
    let schedule = Schedule(baseLR: Float(r.lr), warmupEpochs: Double(r.warmupIters) / Double(steps), epochs: Double(r.epochs),
                            decay: .step(milestones: r.milestones, gamma: r.gamma), warmupFactor: Float(r.warmupFactor))
    let variant = o.precision.variant("Mask R-CNN")
    let run = TransferRun(root: o.outDir, task: spec.name, variant: variant, backbone: backbone, seed: seed)
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    let expected = DetectState(seed: seed, checkpointHash: backbone.hash, config: config, loop: nil)
    var resumed: LoopState?
    if o.resume, FileManager.default.fileExists(atPath: run.checkpoint.path) {
        let saved = try model.backbone.vit.resumeTrainingCheckpoint(from: run.checkpoint, optimizer: optimizer,
                                                                    stateKey: "detect_state") { (saved: DetectState) in
            var same = saved
            same.loop = nil
            guard same == expected else {
                throw TaskError.badArgument("\(run.checkpoint.path) was trained with another seed, backbone or detector and cannot be resumed with these")
            }
        }
        resumed = saved.loop
        say("resuming \(run.dir.path) after \(resumed?.described ?? "epoch 0")", o.verbose)
    }
    let progress = ProgressLine(epochs: r.epochs, stepsPerEpoch: steps, enabled: o.verbose)
    let trainStart = Date()
    var training = TrainingLoop<DetectEpoch>(
        seed: seed, epochs: r.epochs, schedule: schedule, params: model.params, optimizer: optimizer, groups: groups,
        loader: loader, total: "loss", blame: model.backbone.vit, lrAdvice: "lower recipe.lr", logFile: run.log, progress: progress,
        step: { batch, context in
            model.globalBatch = world.size > 1 ? GlobalBatch(shard: batch.shard, ranks: world) : nil
            let terms = try batch.images.withUnsafeBufferPointer {
                try model.trainStep(images: $0.baseAddress!, batch: batch.count,
                                    imageSizes: batch.instances.map { ($0.height, $0.width) },
                                    truth: groundTruth(batch, size: size), stream: context.stream)
            }
            var out = terms.mapValues(Double.init)
            out["loss"] = terms.values.reduce(0) { $0 + Double($1) }
            return out
        },
        record: { s in
            DetectEpoch(epoch: s.epoch, loss: s.terms["loss"] ?? .nan, terms: s.terms.filter { $0.key != "loss" },
                        lr: Double(s.lastLR), seconds: s.seconds, precision: o.precision.rawValue)
        })
    training.stage = "detection "
    training.checkpoint = (run.checkpoint, { loop in
        var state = expected
        state.loop = loop
        try model.backbone.vit.saveTrainingCheckpoint(to: run.checkpoint, optimizer: optimizer, state: state,
                                                      stateKey: "detect_state", metadata: ["method": "detect"])
    })
    _ = try training.run(from: resumed)
    let trainSeconds = elapsed(since: trainStart)
    let detector = run.dir.appendingPathComponent("detector.safetensors")
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let configJSON = String(decoding: try encoder.encode(config), as: UTF8.self)
    if world.isMain {
        try DetectronCheckpoint.safetensors(model.params, metadata: ["format": "detectron2", "config": configJSON]).write(to: detector)
    }
    let evalStart = Date()
    let (bbox, segm, count) = try evaluateDetector(model, val: data.val, annotations: data.valAnnotations, size: size, run: run,
                                                   verbose: o.verbose)
    let checks = [
        "ViTDet backbone: window \(config.backbone.vitdet!.windowSize) with global blocks \(config.backbone.vitdet!.globalBlocks), " +
            "rel-pos (zero-initialised), drop path \(spec.model.dropPath), pyramid strides \(model.backbone.pyramid.strides)",
        "Mask R-CNN as detectron2: RPN \(spec.heads.rpnBatchSize) anchors at 0.5, RoI heads \(spec.heads.roiBatchSize) at " +
            "\(spec.heads.roiPositiveFraction), background last, class-specific boxes and masks",
        "trained \(r.epochs) epochs of \(steps) steps; LSJ \(r.lsjScale[0])-\(r.lsjScale[1]) at \(size) px; evaluated on the last epoch's weights",
        "the trained detector is the run folder's \(detector.lastPathComponent), in detectron2's parameter names",
    ] + o.precision.denseChecks
    let metrics = DetectMetrics(task: spec.name, variant: variant, precision: o.precision.rawValue,
                                checkpoint: backbone.url.path, checkpointHash: backbone.hash, method: backbone.method,
                                role: backbone.role, seed: seed, recipe: r.summary, dataset: data.name, bbox: bbox, segm: segm,
                                valImages: data.val.count, detections: count, protocolChecks: checks,
                                timings: ["train_s": trainSeconds, "eval_s": elapsed(since: evalStart), "total_s": elapsed(since: total),
                                          "train_img_per_s": Double(steps * r.batchSize * r.epochs) / max(trainSeconds, 1e-9),
                                          "eval_img_per_s": Double(data.val.count) / max(elapsed(since: evalStart), 1e-9)],
                                created: timestamp())
    try writeDetectMetrics(metrics, to: run)
    return run
}

/// Evaluates `weights`, a detectron2 ViTDet Mask R-CNN in detectron2's names (safetensors, torch.save
/// or model-zoo .pkl), on `val`: architecture from the weights, heads from `--heads` or the preset.
func evaluateWeights(_ weights: URL, spec: DetectSpec, val: COCODetectionDataset, o: DetectOptions) throws -> TransferRun {
    let total = Date()
    let file = try CheckpointFile.open(weights)
    var config = try inferDetectorConfig(file, inputSize: spec.dataset.imgSize, heads: o.heads)
    // Anchors are not in the weights: the task's when they fit the pyramid, else ViTDet's 8 x stride.
    if spec.model.anchorSizes.count == config.anchorSizes.count {
        config.anchorSizes = spec.model.anchorSizes
        config.aspectRatios = spec.model.aspectRatios
    }
    guard config.heads.classes == val.classes.count else {
        throw TaskError.badArgument("\(weights.path) detects \(config.heads.classes) classes but \(val.classes.count) are in the val annotations")
    }
    let model = try MaskRCNN(config)
    try DetectronCheckpoint.load(file, into: model.params)
    model.backbone.vit.precision = o.precision
    let hash = try fileHash(weights)
    let stem = weights.deletingPathExtension().lastPathComponent
    let variant = o.precision.variant("eval-only")
    let run = TransferRun(dir: o.outDir.appendingPathComponent(spec.name).appendingPathComponent(TransferRun.folderName(variant: variant))
        .appendingPathComponent("\(stem)-\(hash.prefix(8))"))
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    let annotations = o.valData ?? spec.dataset.resolve(spec.dataset.valAnnotations)
    let (bbox, segm, count) = try evaluateDetector(model, val: val, annotations: annotations, size: spec.dataset.imgSize,
                                                   run: run, verbose: o.verbose)
    let metrics = DetectMetrics(task: spec.name, variant: o.precision.variant("Mask R-CNN"), precision: o.precision.rawValue,
                                checkpoint: weights.path, checkpointHash: hash, method: "detectron2", role: "checkpoint",
                                seed: 0, recipe: "evaluated as given (--eval-only)", dataset: spec.dataset.name, bbox: bbox, segm: segm,
                                valImages: val.count, detections: count,
                                protocolChecks: ["architecture from the weights: depth \(config.backbone.depth), width \(config.backbone.embedDim), " +
                                                 "patch \(config.backbone.patchSize), global blocks \(config.backbone.vitdet!.globalBlocks), " +
                                                 "\(config.heads.classes) classes"] + o.precision.denseChecks,
                                timings: ["total_s": elapsed(since: total)], created: timestamp())
    try writeDetectMetrics(metrics, to: run)
    return run
}

/// detectron2's ViTDet Mask R-CNN architecture from its weights' shapes: width, depth and patch from the
/// ViT's, the pretraining grid from pos_embed, window vs global blocks from the rel-pos tables'
/// lengths (`ViTDetOptions.inferred`), the pyramid's levels from `backbone.simfp_*`, the heads (and
/// the pyramid's width) from `ROIHeadConfig.inferred`; the head count from `heads`, else the
/// matching preset; anchors 8 x each level's stride (ViTDet's 32 on stride 4).
func inferDetectorConfig(_ file: CheckpointFile, inputSize: Int, heads: Int?) throws -> MaskRCNNConfig {
    let shapes = file.tensors.mapValues(\.shape)
    func need(_ name: String) throws -> [Int] {
        guard let s = shapes[name] else { throw PathError(file.source, "has no \(name), so it is not a detectron2 ViTDet Mask R-CNN") }
        return s
    }
    let net = ViTDetBackbone.netPrefix
    let patch = try need(net + "patch_embed.proj.weight")
    let width = patch[0], p = patch[2]
    let depth = (0...).prefix { shapes[net + "blocks.\($0).attn.qkv.weight"] != nil }.count
    guard depth > 0 else { throw PathError(file.source, "has no \(net)blocks.0.attn.qkv.weight") }
    let pos = try need(net + "pos_embed")
    let tokens = pos.count == 3 ? pos[1] : 0
    let grid = Int(Double(tokens - 1).squareRoot().rounded())
    guard grid * grid + 1 == tokens else { throw PathError(file.source, "has a pos_embed of shape \(pos), not 1 + a square grid of tokens") }
    let mlp = try need(net + "blocks.0.mlp.fc1.weight")[0]
    let numHeads: Int
    if let heads { numHeads = heads } else if let preset = ModelPreset.allCases.first(where: { $0.config.embedDim == width && $0.config.depth == depth }) {
        numHeads = preset.config.numHeads
    } else {
        throw PathError(file.source, "does not say its attention heads and matches no preset (width \(width), depth \(depth)); pass --heads")
    }
    let lengths = (0..<depth).map { shapes[net + "blocks.\($0).attn.rel_pos_h"]?.first }
    guard var options = ViTDetOptions.inferred(relPosLengths: lengths, patchSize: p) else {
        throw PathError(file.source, "lacks the rel-pos tables (\(net)blocks.i.attn.rel_pos_h) that tell window from global blocks")
    }
    // Evaluated at the task's input size; the global blocks' tables are resized to it (get_rel_pos).
    options.inputSize = inputSize
    var vit = ViTConfig(imgSize: grid * p, patchSize: p, embedDim: width, depth: depth, numHeads: numHeads, mlpHidden: mlp)
    vit.vitdet = options
    let levels = (0..<8).filter { k in shapes.keys.contains { $0.hasPrefix("backbone.simfp_\(k).") } }
    guard !levels.isEmpty else { throw PathError(file.source, "has no backbone.simfp_* pyramid") }
    let scaleFactors = levels.map { Double(p) / Double(1 << $0) }
    let heads = try ROIHeadConfig.inferred(from: shapes, source: file.source)
    let strides = levels.map { 1 << $0 } + [1 << (levels.last! + 1)]
    return MaskRCNNConfig(backbone: vit, pyramidChannels: heads.inChannels, scaleFactors: scaleFactors,
                          anchorSizes: strides.map { Double(8 * $0) }, heads: heads)
}

/// Runs the detector over `val` (test transform), writes `detections.json`, `per_image.json` and
/// figures of the first images into the run folder, and returns the COCO numbers and the detection count.
/// Under MPI the batches are dealt to the ranks (batch k to rank k mod N), each round's raw
/// detections are gathered and post-processed in batch order, and rank 0 alone writes and scores
/// (the other ranks return empty numbers): the one-process files.
func evaluateDetector(_ model: MaskRCNN, val: COCODetectionDataset, annotations: URL, size: Int, run: TransferRun,
                      verbose: Bool) throws -> (bbox: [String: Double], segm: [String: Double], count: Int) {
    let world = Distributed.world
    let loader = DataLoader(builder: DetectionBatchBuilder.test(val, size: size), batchSize: 4, shuffle: false)
    let progress = ProgressLine(enabled: verbose)
    var results: [COCODetection] = []
    var figures: [(Int, ImageDetections)] = []
    let batches = loader.epoch(0, batches: Array(stride(from: world.rank, to: loader.batchCount, by: world.size)))
    var done = 0
    for round in stride(from: 0, to: loader.batchCount, by: world.size) {
        var mine: [Float] = []
        if round + world.rank < loader.batchCount, let batch = try batches.next() {
            let raw = try batch.images.withUnsafeBufferPointer {
                try model.detect(images: $0.baseAddress!, batch: batch.count, imageSizes: batch.instances.map { ($0.height, $0.width) })
            }
            for (k, index) in batch.indices.enumerated() {
                RawImageDetections(index: index, inputHeight: batch.instances[k].height, inputWidth: batch.instances[k].width,
                                   detections: raw[k]).encode(into: &mine)
            }
        }
        for part in try gatherValues(mine, world: world, "gathering the detections") {
            for image in RawImageDetections.decode(part) {
                let original = val.images[image.index]
                let d = ROIHeads.postprocess(image.detections, inputHeight: image.inputHeight, inputWidth: image.inputWidth,
                                             originalHeight: original.height, originalWidth: original.width)
                results += cocoResults(d, imageId: original.id, categoryIds: val.categoryIds, height: original.height, width: original.width)
                if figures.count < 4 { figures.append((image.index, d)) }
                done += 1
            }
        }
        progress.update("evaluating", done: done, total: val.count, unit: "images")
    }
    guard world.isMain else { return ([:], [:], results.count) }
    let detectionsFile = run.dir.appendingPathComponent("detections.json")
    try COCODetection.write(results, to: detectionsFile)
    let figureDir = run.dir.appendingPathComponent("figures")
    try prepareOutputFolder(figureDir, flag: "the run's figures folder")
    for (index, d) in figures {
        let image = try ImageCodec.decode(contentsOf: val.imageURL(index))
        try ImageCodec.writePNG(detectionFigure(image: image, truth: val.instances[index], detections: d, classes: val.classes),
                                to: figureDir.appendingPathComponent("\(val.images[index].id).png"))
    }
    try PerImageResults(detection: val.images.map(\.id), groundTruth: annotations).write(into: run.dir)
    // Scored as read back from detections.json, so metrics.json is exactly the file's COCO AP.
    let gt = try COCODataset(contentsOf: annotations)
    let (bbox, segm) = try cocoMetrics(groundTruth: gt, results: try COCODetection.load(contentsOf: detectionsFile),
                                       groundTruthFile: annotations.path)
    return (bbox, segm, results.count)
}

/// Writes `metrics.json` (rank 0), refusing a non-finite number.
func writeDetectMetrics(_ metrics: DetectMetrics, to run: TransferRun) throws {
    guard Distributed.world.isMain else { return }
    let numbers = metrics.bbox.map { ("bbox \($0.key)", $0.value) } + metrics.segm.map { ("segm \($0.key)", $0.value) } +
        metrics.timings.map { ("timing \($0.key)", $0.value) }
    if let (field, value) = numbers.first(where: { !$0.1.isFinite }) {
        throw TaskError.badArgument("\(field) is \(nonFiniteName(value)) in the metrics of \(displayPath(run.dir.path)): nothing was recorded")
    }
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try writeAtomically(try encoder.encode(metrics), to: run.metrics)
}
