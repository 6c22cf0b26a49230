import Foundation
import MAEDistributed
import MAEData
import MAEFormats
import MAEJSON
import MAEKernels
import MAEModels

/// How a backbone is pretrained.
public enum PretrainMethod: String, CaseIterable, Codable, Sendable {
    /// MAE: masked patches reconstructed by a light decoder (self-supervised, no labels).
    case mae
    /// The supervised baseline: the same ViT trained to classify (global pool + fc_norm + head).
    case supervised
}

/// Everything `mae-eval pretrain` takes. Unset optional values take the method's recipe default.
public struct PretrainOptions: Sendable {
    public var method: PretrainMethod
    public var model = "vit_shapes_patch4"
    /// Replaces the preset's encoder (tests use tiny models); the method still sets decoder or head.
    public var architecture: ViTConfig?
    /// The MAE decoder; nil takes the preset's.
    public var decoder: DecoderConfig?
    /// An ImageFolder; nil uses the Shapes split for the method (pretrain for MAE, supervised otherwise).
    public var data: URL?
    /// Where Shapes is generated when `data` is nil.
    public var shapesRoot = defaultShapesRoot
    public var epochs: Int
    public var batchSize = 64
    /// Absolute learning rate; overrides `blr`.
    public var lr: Double?
    /// Base learning rate: lr = blr * batchSize / 256 (MAE's rule).
    public var blr: Double?
    public var minLR = 0.0
    public var warmupEpochs: Double?
    public var weightDecay: Double?
    public var maskRatio = 0.75
    public var labelSmoothing = 0.1
    /// RandomResizedCrop's smallest area fraction; nil takes the recipe's (0.2 MAE, 0.08 supervised).
    public var minCropScale: Double?
    /// Stochastic depth for supervised training (0.1 in MAE's supervised recipe); MAE uses none.
    public var dropPath: Double?
    public var seed: UInt64 = 0
    public var outDir: URL
    public var resume = false
    /// Background data-loading threads.
    public var workers = 1
    /// Compute threads (`--threads`); nil: every core.
    public var threads: Int?
    /// A step loss above this (or not finite) stops the run.
    public var lossLimit: Float = 1e4
    /// Stops after this many epochs as if the run were killed there (tests of `resume`).
    public var stopAfterEpoch: Int?
    /// Also writes the training checkpoint every this many steps within an epoch (`--checkpoint-every`);
    /// nil: at epoch ends only.
    public var checkpointEvery: Int?
    public var progress = true

    public init(method: PretrainMethod, epochs: Int, outDir: URL) {
        self.method = method; self.epochs = epochs; self.outDir = outDir
    }

    /// Sets `architecture` (and `decoder`) from "SIZE/PATCH/WIDTH/DEPTH/HEADS" and, for the decoder,
    /// "WIDTH/DEPTH/HEADS" (`--architecture`, `--decoder-architecture`: tiny models for tests).
    public mutating func setArchitecture(_ encoder: String, decoder: String?) throws {
        func numbers(_ text: String, _ count: Int, _ flag: String) throws -> [Int] {
            let n = text.split(separator: "/").compactMap { Int($0) }
            guard n.count == count, n.allSatisfy({ $0 > 0 }) else {
                throw TaskError.badArgument("\(flag) must be \(count) positive integers separated by '/', not '\(text)'")
            }
            return n
        }
        let e = try numbers(encoder, 5, "--architecture")
        guard e[0] % e[1] == 0, e[2] % e[4] == 0 else {
            throw TaskError.badArgument("--architecture \(encoder): the size must divide by the patch and the width by the heads")
        }
        architecture = ViTConfig(imgSize: e[0], patchSize: e[1], embedDim: e[2], depth: e[3], numHeads: e[4])
        if let decoder {
            let d = try numbers(decoder, 3, "--decoder-architecture")
            guard d[0] % d[2] == 0 else { throw TaskError.badArgument("--decoder-architecture \(decoder): the width must divide by the heads") }
            self.decoder = DecoderConfig(embedDim: d[0], depth: d[1], numHeads: d[2])
        }
    }

    /// The recipe's defaults: MAE's pretraining (main_pretrain.py) and MAE's supervised ViT
    /// from scratch (appendix A.2: blr 1e-4, wd 0.3, betas (0.9, 0.95), drop path 0.1, smoothing 0.1).
    var baseLR: Double { blr ?? (method == .mae ? 1.5e-4 : 1e-4) }
    var learningRate: Double { lr ?? baseLR * Double(batchSize) / 256 }
    var decay: Double { weightDecay ?? (method == .mae ? 0.05 : 0.3) }
    /// MAE warms up 40 of 800 epochs, the supervised recipe 20 of 300: the same fraction here.
    var warmup: Double { warmupEpochs ?? Double(epochs) * (method == .mae ? 0.05 : 20.0 / 300) }
    var stochasticDepth: Double { dropPath ?? (method == .mae ? 0 : 0.1) }
    var minimumCropScale: Double { minCropScale ?? (method == .mae ? 0.2 : 0.08) }
    var cropScale: ClosedRange<Double> { minimumCropScale...1 }

    /// Refuses values outside their domains before any work, naming the flag.
    public func validate() throws {
        func fail(_ s: String) -> TaskError { .badArgument(s) }
        func check(_ value: Double?, _ flag: String, _ domain: String, _ ok: (Double) -> Bool) throws {
            if let v = value, !(v.isFinite && ok(v)) { throw fail("\(flag) must be \(domain), not \(plainNumber(v))") }
        }
        guard (1...100_000).contains(epochs) else { throw fail("--epochs must be in 1...100000, not \(epochs)") }
        guard (1...65_536).contains(batchSize) else { throw fail("--batch-size must be in 1...65536, not \(batchSize)") }
        guard (0..<1).contains(maskRatio) else { throw fail("--mask-ratio must be in [0, 1)") }
        try check(lr, "--lr", "a positive number", { $0 > 0 })
        try check(blr, "--blr", "a positive number", { $0 > 0 })
        guard learningRate > 0, learningRate.isFinite else { throw fail("the learning rate must be positive") }
        try check(minLR, "--min-lr", "a number >= 0 and at most the learning rate \(learningRate)", { $0 >= 0 && $0 <= learningRate })
        try check(warmupEpochs, "--warmup-epochs", "a number >= 0", { $0 >= 0 })
        try check(weightDecay, "--weight-decay", "a number >= 0", { $0 >= 0 })
        try check(minCropScale, "--min-crop-scale", "in (0, 1]", { $0 > 0 && $0 <= 1 })
        try check(dropPath, "--drop-path", "in [0, 1)", { $0 >= 0 && $0 < 1 })
        guard (0...256).contains(workers) else { throw fail("--workers must be in 0...256, not \(workers)") }
        if let n = checkpointEvery, n < 1 { throw fail("--checkpoint-every must be at least 1, not \(n)") }
    }

    /// Everything that shapes the run, defaults filled in, keyed by flag name (a resume refusal
    /// names the flag).
    func resolvedRecipe(data: String, images: Int) -> PretrainRecipe {
        PretrainRecipe(method: method.rawValue, model: architecture.map { "custom \($0.embedDim)x\($0.depth)" } ?? model,
                       data: data, images: images, epochs: epochs, batchSize: batchSize, lr: learningRate, blr: baseLR,
                       minLR: minLR, warmupEpochs: warmup, weightDecay: decay, maskRatio: maskRatio,
                       labelSmoothing: labelSmoothing, minCropScale: minimumCropScale, dropPath: stochasticDepth, seed: seed)
    }
}

/// The resolved pretraining recipe, stored in every training checkpoint and written to config.yaml.
public struct PretrainRecipe: Codable, Equatable, Sendable {
    public var method: String, model: String, data: String, images: Int, epochs: Int, batchSize: Int
    public var lr: Double, blr: Double, minLR: Double, warmupEpochs: Double, weightDecay: Double, maskRatio: Double
    public var labelSmoothing: Double, minCropScale: Double, dropPath: Double, seed: UInt64

    enum CodingKeys: String, CodingKey {
        case method = "--method", model = "--model", data = "--data", images = "the image count of --data"
        case epochs = "--epochs", batchSize = "--batch-size", lr = "--lr", blr = "--blr", minLR = "--min-lr"
        case warmupEpochs = "--warmup-epochs", weightDecay = "--weight-decay", maskRatio = "--mask-ratio"
        case labelSmoothing = "the label smoothing", minCropScale = "--min-crop-scale", dropPath = "--drop-path", seed = "--seed"
    }
}

/// One line of `log.jsonl`.
public struct EpochLog: EpochLine, Sendable, Equatable {
    public var epoch: Int
    public var loss: Double
    public var lr: Double
    public var images_per_s: Double
    public var seconds: Double
}

/// `metrics.json` of a finished run.
public struct PretrainMetrics: Codable, Sendable {
    public var method: String
    public var model: String
    public var data: String
    public var epochs: Int
    public var final_loss: Double
    public var losses: [Double]
    public var images_per_s: Double
    public var seconds: Double
    public var recipe: String
    public var seed: UInt64
    public var batch_size: Int
    public var checkpoint: String
    public var backbone: String
    /// The mae-eval that made the run and the BLAS it ran on (absent in runs of older versions).
    public var mae_eval_version: String? = MAEEvalVersion.described
    public var blas: BLASInfo? = .current
    /// When the run finished (ISO 8601). Only here and not in the weights, so identical runs write
    /// byte-identical safetensors.
    public var created: String
}

/// What a finished (or interrupted-by-request) run returns.
public struct PretrainResult: Sendable {
    public var log: [EpochLog]
    public var metrics: PretrainMetrics?
    public var outDir: URL
}

/// Files a run writes into its folder.
public struct PretrainFiles: Sendable {
    public var dir: URL
    public var log: URL { dir.appendingPathComponent("log.jsonl") }
    public var metrics: URL { dir.appendingPathComponent("metrics.json") }
    /// Weights, optimizer state (`optim.*`) and the resume state (loop position included), rewritten
    /// at every epoch end and every `checkpointEvery` steps.
    public var checkpoint: URL { dir.appendingPathComponent("checkpoint.safetensors") }
    /// The final weights alone (MAE: encoder + decoder; supervised: encoder + fc_norm + head).
    public var backbone: URL { dir.appendingPathComponent("backbone.safetensors") }
    public var lossPlot: URL { dir.appendingPathComponent("loss.png") }
    public init(dir: URL) { self.dir = dir }
}

/// Errors of a pretraining run's folder; each reads as one sentence (divergence is `TrainingDiverged`).
public enum PretrainError: Error, LocalizedError, CustomStringConvertible {
    case cannotResume(String)
    case existingRun(URL)

    public var description: String {
        switch self {
        case .cannotResume(let why): "Cannot resume: \(why)."
        case .existingRun(let url):
            "\(url.path) already holds a checkpoint; pass --resume to continue it or choose another --out-dir."
        }
    }
    public var errorDescription: String? { description }
}

/// The resume state stored in the checkpoint's metadata under `train_state`.
struct TrainState: Codable, Equatable {
    var epoch: Int
    /// nil in checkpoints of earlier versions, which cannot be checked and are not resumed.
    var recipe: PretrainRecipe?
    /// The epoch counts of earlier schedules when a finished run was extended with a larger `--epochs`.
    var extendedFrom: [Int]?
    /// The loop's position (mid-epoch included); nil in checkpoints of earlier versions (epoch ends only).
    var loop: LoopState?
}

/// Pretrains a ViT by MAE or supervised classification, as `mae-eval pretrain` does.
///
/// Runs through `TrainingLoop`. Writes `log.jsonl` (one object per epoch), `checkpoint.safetensors`
/// at every epoch end and every `checkpointEvery` steps (weights, AdamW moments as `optim.exp_avg` /
/// `optim.exp_avg_sq` / `optim.step`, and `train_state` with the loop's position),
/// `backbone.safetensors`, `metrics.json` and `loss.png` at the end. Every random draw (data order,
/// augmentation, masking noise, drop path) is a pure function of (seed, epoch, step or sample), so
/// the loop's position is the whole RNG position and a run resumed from any checkpoint (after
/// `kill -9` too) matches an unbroken one bit for bit (given the same flags and thread count).
public func runPretraining(_ o: PretrainOptions) throws -> PretrainResult {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    guard let preset = ModelPreset(name: o.model) else { throw ModelError.unknownPreset(o.model) }
    try o.validate()
    // The run folder is checked and locked before any work, and stays locked until the run returns.
    // Rank 0 alone writes the run folder (under MPI).
    let world = Distributed.world
    let lock = world.isMain ? try RunFolderLock(o.outDir, flag: "--out-dir") : nil
    defer { withExtendedLifetime(lock) {} }

    // Data: decoded once into memory (Shapes is small), augmented per epoch by the loader.
    let (folder, dataName) = try pretrainingData(o)
    let source = try DecodedImages(folder)
    let classes = folder.classes.count
    if o.method == .supervised && classes < 2 {
        throw PathError(folder.root, "has \(classes) class folder; supervised pretraining needs at least two", period: false)
    }
    guard source.count >= o.batchSize else {
        throw PathError(folder.root, "holds \(source.count) images, fewer than one batch of \(o.batchSize)", period: false)
    }

    var config = o.architecture ?? preset.config
    switch o.method {
    case .mae: config.decoder = o.decoder ?? preset.decoder
    case .supervised: config.numClasses = classes; config.pooling = .avg
    }
    let model = try VisionTransformer(config: config)
    try model.checkMemory(batch: BatchShard(rank: world.rank, of: world.size, total: o.batchSize).count, training: true,
                          maskRatio: o.method == .mae ? o.maskRatio : 0)
    model.initializeWeights(seed: o.seed, headStd: 0.02)
    model.dropPath = Float(o.stochasticDepth)
    let groups = ParameterGroups(layout: model.params.layout, depth: config.depth,
                                 noDecay: ["pos_embed", "cls_token", "mask_token", "decoder_pos_embed"])
    let optimizer = AdamW(count: model.params.layout.totalCount, groups: groups, beta1: 0.9, beta2: 0.95,
                          weightDecay: Float(o.decay))
    let schedule = Schedule(baseLR: Float(o.learningRate), minLR: Float(o.minLR), warmupEpochs: o.warmup,
                            epochs: Double(o.epochs))
    let transform = MAETransform.train(RandomResizedCrop(size: config.imgSize, scale: o.cropScale))
    let loader = DataLoader(source: source, transform: transform, batchSize: o.batchSize, seed: o.seed,
                            shuffle: true, dropLast: true, workers: o.workers, rank: world.rank, of: world.size)
    var recipe = recipeText(o, config: config)
    let resolved = o.resolvedRecipe(data: dataName, images: source.count)

    // Resume or start.
    let files = PretrainFiles(dir: o.outDir)
    let fm = FileManager.default
    var state = TrainState(epoch: 0, recipe: resolved, extendedFrom: nil)
    var resumed: LoopState?
    var notes: [String] = []
    if fm.fileExists(atPath: files.checkpoint.path) {
        guard o.resume else { throw PretrainError.existingRun(o.outDir) }
        let saved = try model.resumeTrainingCheckpoint(from: files.checkpoint, optimizer: optimizer,
                                                       stateKey: "train_state") { (saved: TrainState) in
            try checkResume(saved, against: resolved, checkpoint: files.checkpoint,
                            finalised: fm.fileExists(atPath: files.metrics.path))
        }
        state.epoch = saved.epoch
        if let old = saved.recipe, old.epochs != resolved.epochs {
            state.extendedFrom = (saved.extendedFrom ?? []) + [old.epochs]
        } else {
            state.extendedFrom = saved.extendedFrom
        }
        resumed = saved.loop ?? LoopState(epoch: saved.epoch)
    } else if o.resume && o.progress && world.isMain {
        FileHandle.standardError.write(Data("note: --resume, but \(o.outDir.path) holds no checkpoint: starting a new run\n".utf8))
    }
    if let earlier = state.extendedFrom {
        let note = "extended with --resume: earlier epochs ran on schedules of \(earlier.map(String.init).joined(separator: ", then ")) epochs"
        notes.append(note)
        recipe += "; " + note
    }
    if world.isMain {
        try RunConfig(command: "pretrain", resolved: resolved, run: ["out_dir": o.outDir.path, "workers": String(o.workers)],
                      notes: notes).write(into: o.outDir)
    }

    let progress = ProgressLine(epochs: o.epochs, stepsPerEpoch: loader.batchCount, enabled: o.progress)
    if let resumed { progress.note("resuming after \(resumed.described) from \(files.checkpoint.path)") }
    let runStart = Date()
    let l = config.numPatches
    var lastLoss = readLastLoss(files.log, epoch: state.epoch)
    var training = TrainingLoop<EpochLog>(
        seed: o.seed, epochs: o.epochs, schedule: schedule, params: model.params, optimizer: optimizer, groups: groups,
        loader: loader, total: "loss", blame: model, lrAdvice: "lower --blr", logFile: files.log, progress: progress,
        step: { batch, context in
            // Drop path and masking draw from the step's stream, fixed by (seed, epoch, step), for the
            // whole global batch; this rank keeps its rows.
            let stepStream = context.stream, shard = batch.shard, b = batch.count
            model.batchShard = shard
            let loss: Float = batch.images.withUnsafeBufferPointer { images in
                let x = images.baseAddress!
                switch o.method {
                case .mae:
                    var noiseStream = stepStream.derived(1)
                    let noise = shard.rows((0..<(shard.total * l)).map { _ in noiseStream.nextFloat() }, perRow: l)
                    let mask = PatchMask(noise: noise, batch: b, numPatches: l, maskRatio: o.maskRatio)
                    let encoded = model.forwardEncoder(images: x, batch: b, mask: mask, training: true,
                                                       seed: stepStream.derived(2).state)
                    let decoded = model.forwardDecoder(encoded)
                    let loss = model.forwardLoss(decoded, images: x)
                    model.backwardPretrain(decoded)
                    return loss
                case .supervised:
                    let pass = model.forwardLogits(images: x, batch: b, training: true, seed: stepStream.derived(2).state)
                    let targets = smoothedTargets(labels: batch.labels, classes: classes, smoothing: Float(o.labelSmoothing))
                    let loss = model.classificationLoss(pass, targets: targets)
                    model.backwardClassification(pass)
                    return loss
                }
            }
            return ["loss": Double(loss)]
        },
        record: { summary in
            lastLoss = summary.terms["loss"] ?? .nan
            return EpochLog(epoch: summary.epoch, loss: lastLoss, lr: Double(summary.lastLR),
                            images_per_s: summary.imagesPerSecond, seconds: summary.seconds)
        })
    training.mean = .perStep
    training.lossLimit = o.lossLimit
    training.checkpointEvery = o.checkpointEvery
    training.stopAfterEpoch = o.stopAfterEpoch
    training.checkpoint = (files.checkpoint, { loop in
        state.epoch = loop.epoch
        state.loop = loop
        try model.saveTrainingCheckpoint(to: files.checkpoint, optimizer: optimizer, state: state, stateKey: "train_state",
                                         metadata: provenance(o, data: dataName, recipe: recipe, epochs: loop.epoch, loss: lastLoss))
    })
    let startEpoch = state.epoch
    let log = try training.run(from: resumed)
    let epochsRun = state.epoch - startEpoch
    guard state.epoch >= o.epochs else { return PretrainResult(log: log, metrics: nil, outDir: o.outDir) }
    guard world.isMain else { return PretrainResult(log: log, metrics: nil, outDir: o.outDir) }

    let finalLoss = log.last?.loss ?? .nan
    try model.save(to: files.backbone,
                   metadata: provenance(o, data: dataName, recipe: recipe, epochs: state.epoch, loss: finalLoss))
    let timed = log.suffix(max(epochsRun, 1))
    let metrics = PretrainMetrics(
        method: o.method.rawValue, model: preset.rawValue, data: dataName, epochs: state.epoch, final_loss: finalLoss,
        losses: log.map(\.loss), images_per_s: timed.map(\.images_per_s).reduce(0, +) / Double(max(timed.count, 1)),
        seconds: epochsRun > 0 ? Date().timeIntervalSince(runStart) : 0, recipe: recipe, seed: o.seed,
        batch_size: o.batchSize, checkpoint: files.checkpoint.path, backbone: files.backbone.path,
        created: timestamp())
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try writeAtomically(try encoder.encode(metrics), to: files.metrics)
    try writeLossPlot(log, method: o.method, to: files.lossPlot)
    return PretrainResult(log: log, metrics: metrics, outDir: o.outDir)
}

/// Refuses a resume whose recipe differs from the checkpoint's, naming the first differing flag. A
/// finished run may be extended to more epochs (its earlier schedule is recorded); fewer epochs, or
/// the same on a finished run, leave nothing to do and are refused, unless the run was stopped
/// after its last checkpoint and before its final files (`finalised` false): then those are written.
func checkResume(_ saved: TrainState, against new: PretrainRecipe, checkpoint: URL, finalised: Bool) throws {
    guard let old = saved.recipe else {
        throw PretrainError.cannotResume("\(checkpoint.path) does not record its recipe (an earlier mae-eval wrote it), " +
                                         "so a resume cannot be checked; choose another --out-dir")
    }
    let finished = saved.epoch >= old.epochs
    var comparable = new
    if finished {
        // Extending a finished run: the new schedule's length (and the warmup derived from it) may differ.
        comparable.epochs = old.epochs
        comparable.warmupEpochs = old.warmupEpochs
    }
    if let d = firstDifference(comparable, old) {
        throw PretrainError.cannotResume("\(d.field) is \(d.new) but the run being resumed used \(d.old); " +
                                         "resume with the same recipe or choose another --out-dir")
    }
    if new.epochs < saved.epoch || (finished && finalised && new.epochs == saved.epoch) {
        throw PretrainError.cannotResume("the run in \(checkpoint.deletingLastPathComponent().path) has already completed " +
            "\(saved.epoch) of its \(old.epochs) epochs, so --epochs \(new.epochs) leaves nothing to do " +
            "(pass a larger --epochs to extend a finished run)")
    }
}

/// The training images and a description of them for the metadata.
func pretrainingData(_ o: PretrainOptions) throws -> (ImageFolder, String) {
    if let data = o.data { return (try ImageFolder(root: data), "ImageFolder \(data.path)") }
    let paths = try rankZeroFirst { try ShapesDataset.ensure(at: o.shapesRoot) }
    let counts = ShapesCounts.standard
    switch o.method {
    case .mae:
        return (try ImageFolder(root: paths.pretrain),
                "Shapes pretrain split (\(counts.pretrain) unlabeled images, 32 px, generator seed 0)")
    case .supervised:
        return (try ImageFolder(root: paths.supervised),
                "Shapes supervised split (\(counts.supervised) labeled images, 10 classes, 32 px, generator seed 0)")
    }
}

/// An ImageFolder decoded once into memory: Shapes is a few MB, and decoding every epoch would
/// cost as much CPU as the small model's step.
struct DecodedImages: DataSource {
    let images: [RGBImage]
    let labels: [Int]
    var count: Int { images.count }

    init(_ folder: ImageFolder) throws {
        images = try folder.samples.map { try ImageCodec.decode(contentsOf: $0.url) }
        labels = folder.samples.map(\.label)
    }
    func label(_ index: Int) -> Int { labels[index] }
    func image(_ index: Int) throws -> RGBImage { images[index] }
}

/// The recipe in one line for the metadata and metrics.
func recipeText(_ o: PretrainOptions, config: ViTConfig) -> String {
    let lr = String(format: "%.3g", o.learningRate)
    let rate = o.lr != nil ? "lr \(lr)" : "lr \(lr) (blr \(String(format: "%.3g", o.baseLR)) x \(o.batchSize)/256)"
    let common = "AdamW (0.9, 0.95), \(rate), weight decay \(o.decay), warmup \(String(format: "%.3g", o.warmup)) " +
        "epochs + cosine to \(o.minLR) per step, batch \(o.batchSize), seed \(o.seed)"
    switch o.method {
    case .mae:
        let d = config.decoder!
        return "MAE: mask ratio \(o.maskRatio) (argsort of noise), encoder on visible patches, decoder " +
            "\(d.embedDim) wide x \(d.depth) blocks, norm_pix_loss, fixed sin-cos pos_embed, " +
            "RandomResizedCrop(\(o.cropScale.lowerBound), 1) + flip, " + common
    case .supervised:
        return "supervised: cross-entropy with label smoothing \(o.labelSmoothing), global average pooling + fc_norm, " +
            "drop path \(o.stochasticDepth), RandomResizedCrop(\(o.cropScale.lowerBound), 1) + flip, no mixup/cutmix, " + common
    }
}

/// The weights files' provenance metadata. No time stamp (that is in metrics.json), so identical runs
/// give byte-identical weights.
func provenance(_ o: PretrainOptions, data: String, recipe: String, epochs: Int, loss: Double) -> [String: String] {
    ["method": o.method.rawValue, "data": data, "recipe": recipe, "epochs": String(epochs),
     "final_loss": String(format: "%.6f", loss), "seed": String(o.seed)]
}

// MARK: - Checkpoint and log files


/// The loss of the log's line for `epoch` (the last completed one), NaN when there is none.
func readLastLoss(_ url: URL, epoch: Int) -> Double {
    ((try? readJSONLines(EpochLog.self, from: url)) ?? []).last { $0.epoch == epoch }?.loss ?? .nan
}

func writeLossPlot(_ log: [EpochLog], method: PretrainMethod, to url: URL) throws {
    let series = PlotSeries(name: "\(method.rawValue) loss", points: log.map { (Double($0.epoch), $0.loss) })
    let plot = LinePlot(title: "\(method.rawValue) pretraining loss", xLabel: "epoch", yLabel: "loss", series: [series])
    try plot.write(to: url)
}
