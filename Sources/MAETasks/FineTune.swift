import Foundation
import MAEData
import MAEDistributed
import MAEFormats
import MAEKernels
import MAEModels

/// `mae-eval finetune` options beyond the shared ones.
public struct FineTuneOptions: Sendable {
    public var common = TransferOptions()
    /// Partial fine-tuning: only the last N blocks, fc_norm and the head train (paper Fig. 9); nil: all.
    public var blocks: Int?
    /// Continue the run folder's checkpoint (weights, AdamW moments, epoch).
    public var resume = false
    /// Images per step; nil: the task's.
    public var batchSize: Int?
    /// Also writes the run's checkpoint every this many steps within an epoch (`--checkpoint-every`);
    /// nil: at epoch ends only.
    public var checkpointEvery: Int?

    public init() {}
}

/// MAE's fine-tuning model from a backbone: global average pooling + fc_norm + a new head of
/// `classes` (truncated normal, std `headStd`). Weights are copied by name; the backbone's final
/// `norm` is dropped and fc_norm starts fresh (MAE's main_finetune), unless the backbone already
/// has a trained fc_norm (a global-pool supervised model), which is kept.
public func makeClassifier(from backbone: VisionTransformer, classes: Int, headStd: Float = 2e-5,
                           seed: UInt64) throws -> (model: VisionTransformer, initialised: [String]) {
    var config = backbone.config
    config.numClasses = classes
    config.pooling = .avg
    config.decoder = nil
    let model = try VisionTransformer(config: config)
    model.precision = backbone.precision
    model.initializeWeights(seed: seed, headStd: headStd)
    var fresh: [String] = []
    for spec in model.params.specs {
        if backbone.params.spec(spec.name) != nil, spec.name != "head.weight", spec.name != "head.bias" {
            try model.params.set(spec.name, shape: spec.shape, Array(backbone.params.value(spec.name)))
        } else {
            fresh.append(spec.name)
        }
    }
    return (model, fresh)
}

/// MAE's fine-tuning parameter groups: layer-wise lr decay, no weight decay on 1-D tensors and the
/// tokens; with `blocks` N, everything but the last N blocks, fc_norm and the head is frozen
/// (patch embedding, cls token and pos_embed included).
public func fineTuneGroups(_ model: VisionTransformer, blocks: Int?, layerDecay: Float) -> ParameterGroups {
    let depth = model.config.depth
    let firstTrained = depth - (blocks ?? depth)
    return ParameterGroups(layout: model.params.layout, depth: depth, noDecay: ["pos_embed", "cls_token", "dist_token"],
                           layerDecay: layerDecay) { name in
        guard blocks != nil else { return false }
        let layer = ParameterGroups.layerID(name, depth: depth)
        return layer == 0 || (name.hasPrefix("blocks.") && layer - 1 < firstTrained)
    }
}

/// A task's fine-tuning recipe with every default filled in, resolved once: the run, its one-line
/// summary, config.yaml and the resume check all read this. Keys are the spec's dotted field names,
/// so a resume refusal names the field.
public struct FineTuneRecipe: Codable, Equatable, Sendable {
    public var optimizer = "adamw"
    public var baseLR: Double, weightDecay: Double, batchSize: Int, epochs: Int, warmupEpochs: Double, minLR: Double
    public var layerDecay: Double, dropPath: Double, clipGrad: Double?, blocks: Int?, initStd: Double
    public var rrcScale: [Double], randAugment: String?, mixup: Double, cutmix: Double, mixupProb: Double
    public var switchProb: Double, labelSmoothing: Double, reprob: Double
    /// The absolute peak learning rate: base_lr x batch_size / 256 (MAE's rule).
    public var lr: Double { baseLR * Double(batchSize) / 256 }

    enum CodingKeys: String, CodingKey {
        case optimizer = "recipe.optimizer", baseLR = "recipe.base_lr", weightDecay = "recipe.weight_decay"
        case batchSize = "recipe.batch_size", epochs = "recipe.epochs", warmupEpochs = "recipe.warmup_epochs"
        case minLR = "recipe.min_lr", layerDecay = "recipe.layer_decay", dropPath = "recipe.drop_path"
        case clipGrad = "recipe.clip_grad", blocks = "recipe.blocks", initStd = "head.init_std"
        case rrcScale = "recipe.augmentation.rrc_scale", randAugment = "recipe.augmentation.rand_augment"
        case mixup = "recipe.augmentation.mixup", cutmix = "recipe.augmentation.cutmix"
        case mixupProb = "recipe.augmentation.mixup_prob", switchProb = "recipe.augmentation.switch_prob"
        case labelSmoothing = "recipe.augmentation.label_smoothing", reprob = "recipe.augmentation.reprob"
    }

    /// MAE's main_finetune.py defaults where the spec says nothing.
    public init(_ spec: TaskSpec) {
        let r = spec.recipe, a = r.augmentation
        optimizer = r.optimizer?.lowercased() ?? "adamw"
        baseLR = r.baseLR ?? 1e-3; weightDecay = r.weightDecay ?? 0.05; batchSize = r.batchSize ?? 64
        epochs = r.epochs ?? 10; warmupEpochs = r.warmupEpochs ?? 1; minLR = r.minLR ?? 1e-6
        layerDecay = r.layerDecay ?? 0.75; dropPath = r.dropPath ?? 0.1; clipGrad = r.clipGrad; blocks = r.blocks
        initStd = Double(spec.head.initStd ?? 2e-5)
        rrcScale = a?.rrcScale ?? [0.08, 1]; randAugment = a?.randAugment; mixup = a?.mixup ?? 0; cutmix = a?.cutmix ?? 0
        mixupProb = a?.mixupProb ?? 1; switchProb = a?.switchProb ?? 0.5; labelSmoothing = a?.labelSmoothing ?? 0.1
        reprob = a?.reprob ?? 0
    }
}

/// The resume state kept in the run checkpoint's metadata.
struct FineTuneState: Codable, Equatable {
    var epoch: Int
    var seed: UInt64
    var classes: Int
    var checkpointHash: String
    var recipe: FineTuneRecipe
    /// The loop's position (mid-epoch included); nil in checkpoints of earlier versions (epoch ends only).
    var loop: LoopState?
}

/// Top-1 and top-5 (percent) of a classifier on a dataset through the eval transform. Under MPI
/// each rank scores every size-th batch and the counts are summed over the ranks.
func classifierScore(_ model: VisionTransformer, loader: DataLoader, world: World = Distributed.world) throws -> HeadScore {
    var tally = TopKTally()
    let k = model.config.numClasses
    let it = loader.epoch(0, batches: Array(stride(from: world.rank, to: loader.batchCount, by: world.size)))
    while let batch = try it.next() {
        let pass = batch.images.withUnsafeBufferPointer { model.forwardLogits(images: $0.baseAddress!, batch: batch.count) }
        let values = pass.logits!.array
        for r in 0..<batch.count { tally.add(values[(r * k)..<(r * k + k)], label: batch.labels[r]) }
    }
    let sizes = (0..<loader.batchCount).map { min(loader.batchSize, loader.sampleCount - $0 * loader.batchSize) }
    try tally.gatherHits(over: world, batchSizes: sizes)
    try tally.sum(over: world)
    return HeadScore(tally)
}

/// Fine-tunes every backbone for every seed; returns the run folders.
public func runFineTune(_ o: FineTuneOptions) throws -> [TransferRun] {
    let threads = try ComputeThreads(o.common.threads); defer { threads.restore() }
    var spec = try o.common.taskSpec(default: "shapes-finetune")
    guard spec.evaluation == .finetune else {
        throw TaskError.badArgument("task \(spec.name) is a \(spec.evaluation.rawValue) task, not a finetune task")
    }
    // Flags become part of the spec, so the recorded recipe and config.yaml are what runs.
    if let b = o.batchSize {
        guard b > 0 else { throw TaskError.badArgument("--batch-size must be positive") }
        spec.recipe.batchSize = b
        try spec.revalidate(flags: ["--batch-size \(b)"])
    }
    if let n = o.blocks { spec.recipe.blocks = n }
    if let n = o.checkpointEvery, n < 1 { throw TaskError.badArgument("--checkpoint-every must be at least 1, not \(n)") }
    try o.common.prepareOutputs()
    let backbones = try o.common.backbones()
    let data = try o.common.datasets(spec)
    guard data.train.classes == data.val.classes else {
        throw TaskError.badArgument("\(data.train.root.path) and \(data.val.root.path) have different class folders")
    }
    var runs: [TransferRun] = []
    for b in backbones {
        let backbone = try loadBackbone(b, imgSize: spec.dataset.imgSize, heads: o.common.heads, precision: o.common.precision)
        if let n = spec.recipe.blocks, !(0...backbone.model.config.depth).contains(n) {
            throw TaskError.badArgument("\(o.blocks != nil ? "--blocks" : "\(spec.source): recipe.blocks") \(n) is outside 0...\(backbone.model.config.depth) for \(b.url.path)")
        }
        for seed in spec.seeds {
            let run = try fineTuneOne(spec: spec, backbone: backbone, data: data, seed: seed, o: o)
            runs.append(run)
        }
    }
    return runs
}

func fineTuneOne(spec: TaskSpec, backbone: LoadedBackbone, data: (train: ImageFolder, val: ImageFolder, name: String),
                 seed: UInt64, o: FineTuneOptions) throws -> TransferRun {
    let total = Date(), r = FineTuneRecipe(spec), verbose = o.common.verbose
    let k = data.train.classes.count, size = spec.dataset.imgSize
    let blocks = r.blocks
    let depth = backbone.model.config.depth
    let (model, fresh) = try makeClassifier(from: backbone.model, classes: k, headStd: Float(r.initStd), seed: seed)
    model.dropPath = Float(r.dropPath)
    let firstTrained = depth - (blocks ?? depth)
    model.lowestTrainedBlock = firstTrained
    let groups = fineTuneGroups(model, blocks: blocks, layerDecay: Float(r.layerDecay))
    let optimizer = AdamW(count: model.params.layout.totalCount, groups: groups, weightDecay: Float(r.weightDecay))
    let batch = r.batchSize, epochs = r.epochs
    let schedule = Schedule(baseLR: Float(r.lr), minLR: Float(r.minLR), warmupEpochs: r.warmupEpochs, epochs: Double(epochs))
    let scale = r.rrcScale
    // timm's fine-tuning pipeline: RandomResizedCrop + flip (+ RandAugment), normalise, random erasing.
    let crop = RandomResizedCrop(size: size, scale: scale[0]...scale[1])
    let randAugment = try r.randAugment.map { policy in
        do { return try RandAugment(config: policy) } catch {
            throw TaskError.badArgument("the task's rand_augment policy '\(policy)' is not one timm defines: \(error)")
        }
    }
    let erasing = r.reprob > 0 ? RandomErasing(probability: r.reprob) : nil
    let world = Distributed.world
    try model.checkMemory(batch: BatchShard(rank: world.rank, of: world.size, total: batch).count, training: true)
    // Each rank builds its rows of every global batch (one process: all of them).
    let train = DataLoader(source: data.train, transform: MAETransform.finetune(crop, randAugment: randAugment),
                           tensorTransform: erasing, batchSize: batch, seed: seed, shuffle: true,
                           dropLast: data.train.count >= batch, rank: world.rank, of: world.size,
                           mixPartners: r.mixup > 0 || r.cutmix > 0)
    let val = DataLoader(source: data.val, transform: MAETransform.eval(size: size, cropRatio: spec.dataset.cropRatio),
                         batchSize: 128, shuffle: false)
    let smoothing = r.labelSmoothing
    let mixer = r.mixup > 0 || r.cutmix > 0
        ? Mixup(classes: k, mixupAlpha: r.mixup, cutmixAlpha: r.cutmix, probability: r.mixupProb,
                switchProbability: r.switchProb, labelSmoothing: smoothing)
        : nil
    let variant = o.common.variant(blocks.map { "last \($0) blocks" } ?? "full")
    let run = TransferRun(root: o.common.outDir, task: spec.name, variant: variant, backbone: backbone, seed: seed)
    // The run folder is locked for the whole run (a second run into it is refused at once).
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    try run.writeConfig(command: "finetune", spec: spec, resolved: r, backbone: backbone, seed: seed, data: data,
                        extra: ["variant": variant, "resume": String(o.resume)])
    let expected = FineTuneState(epoch: 0, seed: seed, classes: k, checkpointHash: backbone.hash, recipe: r)
    var resumed: LoopState?
    if o.resume, FileManager.default.fileExists(atPath: run.checkpoint.path) {
        let saved = try model.resumeTrainingCheckpoint(from: run.checkpoint, optimizer: optimizer,
                                                        stateKey: "finetune_state") { (saved: FineTuneState) in
            let what = "the run being resumed (\(run.checkpoint.path))"
            if let d = firstDifference(r, saved.recipe) {
                throw TaskError.badArgument("\(d.field) is \(d.new) but \(what) used \(d.old); resume with the same recipe or choose another --out-dir")
            }
            var same = saved
            same.epoch = expected.epoch
            same.loop = nil
            guard same == expected else {
                throw TaskError.badArgument("\(run.checkpoint.path) was fine-tuned with another seed, class count or backbone and cannot be resumed with these")
            }
        }
        resumed = saved.loop ?? LoopState(epoch: saved.epoch)
        say("resuming \(run.dir.path) after \(resumed!.described)", verbose)
    } else if FileManager.default.fileExists(atPath: run.checkpoint.path) {
        say("note: starting \(run.dir.path) afresh (pass --resume to continue its checkpoint)", verbose)
    } else if o.resume {
        say("note: --resume, but \(run.dir.path) holds no checkpoint: starting it afresh", verbose)
    }
    let frozenBefore = frozenFingerprint(model, groups)
    let startEpoch = resumed?.epoch ?? 0
    let trainStart = Date()
    let progress = ProgressLine(epochs: epochs, stepsPerEpoch: train.batchCount, enabled: verbose)
    var training = TrainingLoop<TransferEpoch>(
        seed: seed, epochs: epochs, schedule: schedule, params: model.params, optimizer: optimizer, groups: groups,
        loader: train, total: "loss", blame: model, lrAdvice: "lower base_lr", logFile: run.log, progress: progress,
        step: { b, context in
            model.batchShard = b.shard
            var images = b.images
            var targets = smoothedTargets(labels: b.labels, classes: k, smoothing: Float(smoothing))
            if let mixer {
                var mixRNG = context.stream.derived(1)
                let draw = mixer.draw(height: size, width: size, rng: &mixRNG)
                targets = mixer.mix(&images, labels: b.labels, partners: b.partners, channels: 3, height: size, width: size,
                                    draw: draw).targets
            }
            let pass = images.withUnsafeBufferPointer {
                model.forwardLogits(images: $0.baseAddress!, batch: b.count, training: true, seed: context.stream.derived(2).state)
            }
            let loss = model.classificationLoss(pass, targets: targets)
            model.backwardClassification(pass)
            return ["loss": Double(loss)]
        },
        record: { summary in
            .recorded(summary, lr: Double(schedule.lr(atEpoch: Double(summary.epoch))),
                      label: "\(backbone.stem) \(variant)", epochs: epochs, progress: progress)
        })
    training.stage = "fine-tuning "
    training.clipNorm = r.clipGrad.map(Float.init)
    training.checkpointEvery = o.checkpointEvery
    training.endEpoch = { _ in ["val_top1": try classifierScore(model, loader: val).top1] }
    training.checkpoint = (run.checkpoint, { loop in
        var state = expected
        state.epoch = loop.epoch
        state.loop = loop
        try model.saveTrainingCheckpoint(to: run.checkpoint, optimizer: optimizer, state: state,
                                         stateKey: "finetune_state", metadata: ["method": "finetune"])
    })
    _ = try training.run(from: resumed)
    let final = try classifierScore(model, loader: val)
    guard frozenFingerprint(model, groups) == frozenBefore else {
        throw TaskError.badArgument("internal check failed: frozen parameters changed during partial fine-tuning")
    }
    let trained = model.params.specs.indices.filter { !groups.frozen[$0] }.count
    var checks = [
        blocks.map { n in "partial fine-tuning (last \(n) blocks): blocks \(firstTrained)..\(depth - 1) of \(depth), fc_norm and head train; the \(model.params.specs.count - trained) frozen tensors (patch embedding, tokens, earlier blocks) are verified unchanged" }
            ?? "full fine-tuning: all \(trained) trainable tensors train, with layer-wise lr decay \(r.layerDecay)",
        "initialised fresh: \(fresh.joined(separator: ", ")); the backbone's final norm is not used (global pool + fc_norm)",
        "training mode: drop path \(r.dropPath); val through resize + center crop in eval mode, the last epoch is reported (val chooses nothing)",
        "augmentation: RandomResizedCrop (scale \(scale[0])-\(scale[1])) + flip" +
            (r.randAugment.map { " + RandAugment \($0)" } ?? "") +
            ", mixup \(r.mixup), cutmix \(r.cutmix), label smoothing \(smoothing)" +
            (r.reprob > 0 ? ", random erasing p \(r.reprob) (pixel)" : "") + " (timm's implementations)",
    ]
    if startEpoch > 0 { checks.append("resumed after epoch \(startEpoch) from the run's checkpoint (weights and AdamW state)") }
    let metrics = TransferMetrics(
        task: spec.name, evaluation: "finetune", variant: variant, checkpoint: backbone.url.path, checkpointHash: backbone.hash,
        method: backbone.method, role: backbone.role, top1: final.top1, top5: final.top5, seed: seed,
        recipe: spec.recipeSummary + (blocks.map { ", last \($0) blocks only" } ?? ""), dataset: data.name,
        trainData: data.train.root.path, valData: data.val.root.path, trainImages: data.train.count, valImages: data.val.count,
        classes: k, pooling: "mean of patch tokens + fc_norm (global pool)", selected: nil, grid: nil, protocolChecks: checks,
        timings: ["train_s": elapsed(since: trainStart), "total_s": elapsed(since: total)], epochs: epochs, created: timestamp())
    if Distributed.world.isMain { try PerImageResults(classification: data.val, hits: final.top1Hits).write(into: run.dir) }
    try run.write(metrics)
    return run
}

/// Fingerprint of the frozen parameters' values.
func frozenFingerprint(_ model: VisionTransformer, _ groups: ParameterGroups) -> String {
    var data = Data()
    for (i, spec) in model.params.specs.enumerated() where groups.frozen[i] {
        data.append(Data(buffer: UnsafeBufferPointer(model.params.value(spec.name))))
    }
    return fnv1a(data)
}

