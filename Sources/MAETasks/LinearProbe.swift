import Foundation
import MAEJSON
import MAEData
import MAEDistributed
import MAEKernels
import MAEFormats
import MAEModels

/// How `mae-eval linprobe` trains its head (`--mode`).
public enum LinearProbeMode: String, CaseIterable, Sendable {
    /// Features extracted once, a grid of heads trained on them at once (the Shapes task's default).
    case cached
    /// MAE's main_linprobe.py: augmented images through the frozen backbone every epoch.
    case augmented
}

/// `mae-eval linprobe` options beyond the shared ones.
public struct LinearProbeOptions: Sendable {
    public var common = TransferOptions()
    /// `cached` (default of the Shapes task) or `augmented` (MAE's protocol); nil: the task's.
    public var mode: LinearProbeMode?
    /// nil: the task's head.pooling.
    public var pooling: Pooling?
    /// nil: the task's head.last_blocks (1).
    public var lastBlocks: Int?
    public var cache = FeatureCache.standard
    /// `--mode augmented`: continue each run folder's checkpoint (head, LARS state, BatchNorm
    /// statistics, loop position) instead of starting afresh.
    public var resume = false
    /// `--mode augmented`: also checkpoint every this many steps within an epoch; nil: at epoch ends only.
    public var checkpointEvery: Int?
    /// Low-shot (`--shots K`, `--label-fraction F`): replace the task's `recipe.shots` / `recipe.label_fraction`.
    public var shots: Int?
    public var labelFraction: Double?

    public init() {}
}

/// Runs the linear probe of every backbone and seed; returns the run folders.
public func runLinearProbe(_ o: LinearProbeOptions) throws -> [TransferRun] {
    let threads = try ComputeThreads(o.common.threads); defer { threads.restore() }
    var spec = try o.common.taskSpec(default: "shapes-linprobe")
    guard spec.evaluation == .linprobe else {
        throw TaskError.badArgument("task \(spec.name) is a \(spec.evaluation.rawValue) task, not a linprobe task")
    }
    let mode = o.mode?.rawValue ?? spec.recipe.mode ?? "cached"
    guard ["cached", "augmented"].contains(mode) else { throw TaskError.badArgument("--mode must be cached or augmented, not '\(mode)'") }
    if mode == "augmented" && spec.recipe.augmented == nil {
        throw TaskError.badArgument("task \(spec.name) has no recipe.augmented section for --mode augmented")
    }
    spec.recipe.mode = mode
    if o.shots != nil || o.labelFraction != nil {
        // The flags become the spec's budget (config.yaml records it) and are checked with it.
        (spec.recipe.shots, spec.recipe.labelFraction) = (o.shots, o.labelFraction)
        try spec.revalidate(flags: [o.shots.map { "--shots \($0)" }, o.labelFraction.map { "--label-fraction \($0)" }].compactMap { $0 })
    }
    if let n = o.checkpointEvery, n < 1 { throw TaskError.badArgument("--checkpoint-every must be at least 1, not \(n)") }
    if mode == "cached" && (o.resume || o.checkpointEvery != nil) {
        throw TaskError.badArgument("\(o.resume ? "--resume" : "--checkpoint-every") applies to --mode augmented only: the cached probe keeps no checkpoint")
    }
    let lastBlocks = o.lastBlocks ?? spec.head.lastBlocks ?? 1
    guard lastBlocks >= 1 else { throw TaskError.badArgument("--last-blocks must be at least 1") }
    // The flags become part of the spec, so config.yaml records what runs.
    spec.head.lastBlocks = lastBlocks
    if let p = o.pooling { spec.head.pooling = p }
    try o.common.prepareOutputs()
    let backbones = try o.common.backbones()
    let data = try o.common.datasets(spec)
    var runs: [TransferRun] = []
    for b in backbones {
        let backbone = try loadBackbone(b, imgSize: spec.dataset.imgSize, heads: o.common.heads, precision: o.common.precision)
        guard lastBlocks <= backbone.model.config.depth else {
            let field = o.lastBlocks != nil ? "--last-blocks" : "\(spec.source): head.last_blocks"
            throw TaskError.badArgument("\(field) \(lastBlocks) exceeds the depth \(backbone.model.config.depth) of \(b.url.path)")
        }
        let feature = ProbeFeature(model: backbone.model, requested: o.pooling ?? spec.head.pooling, lastBlocks: lastBlocks)
        for seed in spec.seeds {
            let run = mode == "cached"
                ? try cachedProbe(spec: spec, backbone: backbone, feature: feature, data: data, seed: seed, o: o)
                : try augmentedProbe(spec: spec, backbone: backbone, feature: feature, data: data, seed: seed, o: o)
            runs.append(run)
        }
    }
    return runs
}

/// The variant name reports group by.
func probeVariant(mode: String, feature: ProbeFeature) -> String {
    "\(mode), \(feature.requested.rawValue)" + (feature.lastBlocks > 1 ? ", last \(feature.lastBlocks) blocks" : "")
}

/// Fingerprint of every backbone parameter, to show it did not change.
func parameterFingerprint(_ model: VisionTransformer) -> String {
    fnv1a(Data(buffer: model.params.values.buffer))
}

/// Eval-transform features of both splits, through the cache.
func cachedSplits(spec: TaskSpec, backbone: LoadedBackbone, feature: ProbeFeature,
                  data: (train: ImageFolder, val: ImageFolder, name: String), cache: FeatureCache,
                  verbose: Bool) throws -> (train: FeatureSet, val: FeatureSet, seconds: Double, hits: Int) {
    let start = Date()
    let transform = MAETransform.eval(size: spec.dataset.imgSize, cropRatio: spec.dataset.cropRatio)
    var sets: [FeatureSet] = [], hits = 0
    for folder in [data.train, data.val] {
        let key = cache.key(checkpointHash: backbone.hash, data: folder, imgSize: spec.dataset.imgSize,
                            cropRatio: spec.dataset.cropRatio, feature: feature, precision: backbone.model.precision)
        let (set, hit) = try cache.features(key: key) {
            say("extracting \(folder.count) images of \(folder.root.path) with \(backbone.stem)", verbose)
            let progress = ProgressLine(enabled: verbose)
            return try probeFeatures(model: backbone.model, feature: feature, folder: folder, transform: transform) {
                progress.update("extracting", done: $0, total: folder.count, unit: "images")
            }
        }
        sets.append(set)
        hits += hit ? 1 : 0
    }
    guard sets[0].classes == sets[1].classes else {
        throw TaskError.badArgument("\(data.train.root.path) and \(data.val.root.path) have different class folders")
    }
    return (sets[0], sets[1], elapsed(since: start), hits)
}

/// Features once, standardised; a grid of heads picked on held-out train, retrained on all of train.
func cachedProbe(spec: TaskSpec, backbone: LoadedBackbone, feature: ProbeFeature,
                 data: (train: ImageFolder, val: ImageFolder, name: String), seed: UInt64,
                 o: LinearProbeOptions) throws -> TransferRun {
    let total = Date(), r = spec.recipe, verbose = o.common.verbose
    let before = parameterFingerprint(backbone.model)
    // The run folder is locked for the whole run (a second run into it is refused at once).
    let budget = try LabelBudget.of(spec.recipe)
    let variant = o.common.variant(probeVariant(mode: "cached", feature: feature) + (budget.map { ", \($0.described)" } ?? ""))
    let run = TransferRun(root: o.common.outDir, task: spec.name, variant: variant, backbone: backbone, seed: seed)
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    let splits = try cachedSplits(spec: spec, backbone: backbone, feature: feature, data: data, cache: o.cache, verbose: verbose)
    let train = try budget.map { splits.train.subset(try lowShotSubset(labels: splits.train.labels, classes: splits.train.classes,
                                                                        budget: $0, seed: seed)) } ?? splits.train
    let val = splits.val, k = train.classes.count
    let trainStart = Date()
    let grid = GridProbeSettings(recipe: r)
    let result: GridProbeResult
    do {
        result = try gridProbe(train: train, val: val, settings: grid, seed: seed, progress: ProgressLine(enabled: verbose))
    } catch let TaskError.badArgument(why) {
        throw TaskError.badArgument("linear probe of \(backbone.url.path) (seed \(seed)): \(why)")
    }
    let (final, pairs, scores, best, split, log) = (result.val, result.pairs, result.heldout, result.best, result.split, result.log)
    let epochs = result.epochs, fraction = grid.holdout
    let chosen = pairs[best]
    let trainSeconds = elapsed(since: trainStart)
    guard parameterFingerprint(backbone.model) == before else {
        throw TaskError.badArgument("internal check failed: the backbone's weights changed during a linear probe")
    }

    let checks = [
        "backbone frozen: its weights' fingerprint is identical before and after the run",
        "backbone in eval mode: no drop path, no masking; features of the eval transform (resize + center crop, crop ratio \(spec.dataset.cropRatio))",
        "normalisation: features standardised with the training part's mean and std only (BatchNorm without affine, eval form); the backbone has no BatchNorm",
        "selection: lr and weight decay picked on " + (grid.folds > 1
            ? "\(grid.folds)-fold stratified cross-validation of train (seed 0)"
            : "a stratified \(Int((fraction * 100).rounded()))% of train (seed 0, \(split.held.count) images)") +
            " by the lowest held-out cross-entropy; val used only for the reported number and the curve",
        "feature: \(feature.describe(backbone.model))",
    ] + (budget.map { ["low-shot: \($0.described), drawn class by class with seed \(seed): \(train.count) of the \(splits.train.count) train images, " +
                        "the same for every backbone; selection and the refit see only these"] } ?? [])
    try PerImageResults(classification: data.val, hits: final.top1Hits).write(into: run.dir)
    let metrics = TransferMetrics(
        task: spec.name, evaluation: "linprobe", variant: variant, checkpoint: backbone.url.path, checkpointHash: backbone.hash,
        method: backbone.method, role: backbone.role, top1: final.top1, top5: final.top5, seed: seed,
        recipe: spec.recipeSummary + "; retrained head: \(result.steps) SGD steps (\(epochs) epochs x \(result.stepsPerEpoch) steps per epoch)",
        dataset: data.name, trainData: data.train.root.path, valData: data.val.root.path,
        trainImages: train.count, valImages: val.count, classes: k, pooling: feature.describe(backbone.model),
        selected: ["lr": pairs[best].lr, "weight_decay": pairs[best].wd, "heldout_top1": scores[best].top1],
        // A diverged point (never chosen) has no held-out loss to record: it is marked instead.
        grid: pairs.indices.map { ["lr": pairs[$0].lr, "weight_decay": pairs[$0].wd, "heldout_top1": scores[$0].top1]
            .merging(scores[$0].loss.isFinite ? ["heldout_loss": scores[$0].loss] : ["diverged": 1]) { a, _ in a } },
        protocolChecks: checks,
        timings: ["extract_s": splits.seconds, "train_s": trainSeconds, "total_s": elapsed(since: total),
                  "cache_hits": Double(splits.hits)],
        epochs: epochs, created: timestamp())
    try run.write(metrics, log: log)
    try run.writeConfig(command: "linprobe", spec: spec, resolved: grid, backbone: backbone, seed: seed, data: data,
                        extra: ["variant": variant, "feature": feature.describe(backbone.model), "epochs_run": String(epochs)])
    say("\(backbone.stem) seed \(seed): val top-1 \(String(format: "%.2f", final.top1))% (lr \(chosen.lr), wd \(chosen.wd))", verbose)
    return run
}

/// The cached probe's grid and schedule.
public struct GridProbeSettings: Encodable, Sendable {
    public var lrs: [Double], wds: [Double]
    public var epochs: Int, batchSize: Int, warmupEpochs: Double, holdout: Double
    /// 1: select on one stratified `holdout` part of train; k > 1: on all k folds of train.
    public var folds: Int

    public init(recipe r: RecipeSpec) {
        lrs = r.lrGrid ?? [0.01, 0.03, 0.1, 0.3, 1]
        wds = r.wdGrid ?? [0]
        epochs = r.epochs ?? 100
        batchSize = r.batchSize ?? 256
        warmupEpochs = r.warmupEpochs ?? 0
        holdout = r.holdout ?? 0.1
        folds = r.folds ?? 1
    }
}

/// What `gridProbe` found.
public struct GridProbeResult {
    /// Val score of the selected head retrained on all of train.
    public var val: HeadScore
    public var pairs: [(lr: Double, wd: Double)]
    /// Held-out score of every grid point (trained on the rest of train).
    public var heldout: [HeadScore]
    public var best: Int
    public var split: (fit: [Int], held: [Int])
    /// Per epoch of the retrained head: train loss and val top-1.
    public var log: [TransferEpoch]
    /// Epochs over the cached features (the recipe's) and SGD steps of one epoch of the retrained
    /// head (all of train; a fit part of train takes as many epochs of its own, shorter, size).
    public var epochs: Int, stepsPerEpoch: Int
    /// SGD steps of the retrained head: epochs x steps per epoch.
    public var steps: Int { epochs * stepsPerEpoch }
}

/// The cached linear probe on given features: standardise, train every (lr, wd) head at once on
/// the fit part of train, pick the best on the stratified held-out part (seed 0), retrain it on
/// all of train, score val. Val is read only by the retrained head. A head that diverged
/// (non-finite held-out loss) ranks last and is never chosen. `progress` counts the epochs of
/// every fold's grid and of the refit.
/// - Throws: `TaskError` when every head of the grid diverged.
public func gridProbe(train: FeatureSet, val: FeatureSet, settings g: GridProbeSettings, seed: UInt64,
                      progress: ProgressLine? = nil) throws -> GridProbeResult {
    let d = train.width, k = train.classes.count
    let pairs = g.lrs.flatMap { lr in g.wds.map { (lr: lr, wd: $0) } }
    let points = pairs.map { GridPoint(lr: Float($0.lr), wd: Float($0.wd)) }
    // Held-out parts of train: one stratified part, or every fold of a stratified k-fold split.
    let parts = g.folds > 1 ? stratifiedFolds(labels: train.labels, folds: g.folds, seed: 0)
                            : [stratifiedHoldout(labels: train.labels, fraction: g.holdout, seed: 0)]
    var correct = [Double](repeating: 0, count: points.count), lossSum = correct, heldCount = 0
    let totalEpochs = (parts.count + 1) * g.epochs
    for (fold, part) in parts.enumerated() {
        let fitX = gatherRows(train.features, width: d, part.fit), heldX = gatherRows(train.features, width: d, part.held)
        let fitNorm = Standardizer(fitX, width: d)
        let grid = LinearHeads(width: d, classes: k, points: points)
        grid.train(fitNorm.apply(fitX), labels: part.fit.map { train.labels[$0] }, epochs: g.epochs, batchSize: g.batchSize,
                   warmupEpochs: g.warmupEpochs, seed: seed) { epoch, loss in
            progress?.update("linear probe", done: fold * g.epochs + epoch, total: totalEpochs, unit: "epochs",
                             detail: "fold \(fold + 1)/\(parts.count), \(points.count) heads, lowest train loss " +
                                String(format: "%.4f", loss.filter(\.isFinite).min() ?? .nan))
        }
        let s = grid.evaluate(fitNorm.apply(heldX), labels: part.held.map { train.labels[$0] })
        for i in s.indices {
            correct[i] += s[i].top1 * Double(part.held.count)
            lossSum[i] += s[i].loss * Double(part.held.count)
        }
        heldCount += part.held.count
    }
    guard heldCount > 0 else {
        throw TaskError.badArgument("the \(train.count) train images leave none held out to select (lr, weight decay) on " +
                                    "(one image per class): set recipe.folds above 1")
    }
    let scores = points.indices.map { HeadScore(top1: correct[$0] / Double(heldCount), top5: 0, loss: lossSum[$0] / Double(heldCount)) }
    // The lowest held-out cross-entropy: on a few hundred held-out images top-1 moves in steps of
    // whole images and picks noisily; the loss ranks neighbouring weight decays smoothly.
    // A head that diverged (non-finite loss) ranks last and is never chosen.
    guard let best = scores.indices.filter({ scores[$0].loss.isFinite }).min(by: { scores[$0].loss < scores[$1].loss }) else {
        throw TaskError.badArgument("every one of the \(points.count) (lr, weight decay) heads diverged (non-finite held-out loss): " +
                                    "the features hold NaN or Inf values, or every learning rate is too high")
    }
    let split = parts[0]
    let norm = Standardizer(train.features, width: d)
    let x = norm.apply(train.features), vx = norm.apply(val.features)
    // Weight decay is a penalty per mean loss; scikit-learn's C is one per summed loss, so its
    // penalty per image shrinks as the refit sees all of train instead of a fit part. Same here.
    let fitMean = Double(parts.map(\.fit.count).reduce(0, +)) / Double(parts.count)
    let refit = GridPoint(lr: points[best].lr, wd: points[best].wd * Float(fitMean / Double(train.count)))
    let head = LinearHeads(width: d, classes: k, points: [refit])
    var log: [TransferEpoch] = []
    var epochStart = Date()
    let schedule = WarmupCosine(baseLR: points[best].lr, warmupEpochs: g.warmupEpochs, epochs: Double(g.epochs))
    head.train(x, labels: train.labels, epochs: g.epochs, batchSize: g.batchSize, warmupEpochs: g.warmupEpochs, seed: seed) { epoch, loss in
        progress?.update("linear probe", done: parts.count * g.epochs + epoch, total: totalEpochs, unit: "epochs",
                         detail: "refit on all of train, loss " + String(format: "%.4f", loss[0]))
        let valTop1 = head.evaluate(vx, labels: val.labels)[0].top1
        log.append(TransferEpoch(epoch: epoch, trainLoss: loss[0], lr: Double(schedule.lr(atEpoch: Double(epoch))),
                                 valTop1: valTop1, seconds: elapsed(since: epochStart)))
        epochStart = Date()
    }
    return GridProbeResult(val: head.evaluate(vx, labels: val.labels)[0], pairs: pairs, heldout: scores, best: best,
                           split: split, log: log, epochs: g.epochs,
                           stepsPerEpoch: max(1, (train.count + g.batchSize - 1) / g.batchSize))
}

/// Truncated normal N(0, std) on [-2 std, 2 std] (timm's trunc_normal_).
func truncatedNormal(_ count: Int, std: Float, rng: inout RandomStream) -> [Float] {
    (0..<count).map { _ in
        while true { let x = Float(rng.normal()); if abs(x) <= 2 { return x * std } }
    }
}

/// MAE's linear probe: the frozen backbone sees RandomResizedCrop + flip images every epoch;
/// BatchNorm1d (no affine) + Linear trained by LARS, lr = blr * batch / 256, warmup + cosine.
func augmentedProbe(spec: TaskSpec, backbone: LoadedBackbone, feature: ProbeFeature,
                    data: (train: ImageFolder, val: ImageFolder, name: String), seed: UInt64,
                    o: LinearProbeOptions) throws -> TransferRun {
    let total = Date(), a = spec.recipe.augmented!, verbose = o.common.verbose, model = backbone.model
    let before = parameterFingerprint(model)
    // The run folder is locked for the whole run (a second run into it is refused at once).
    let variant = o.common.variant(probeVariant(mode: "augmented", feature: feature))
    let run = TransferRun(root: o.common.outDir, task: spec.name, variant: variant, backbone: backbone, seed: seed)
    let lock = try run.lock()
    defer { withExtendedLifetime(lock) {} }
    let d = feature.width(model), k = data.train.classes.count
    guard data.train.classes == data.val.classes else {
        throw TaskError.badArgument("\(data.train.root.path) and \(data.val.root.path) have different class folders")
    }
    // Val features do not depend on the head: extract them once (eval transform, cached).
    let valStart = Date()
    let valKey = o.cache.key(checkpointHash: backbone.hash, data: data.val, imgSize: spec.dataset.imgSize,
                             cropRatio: spec.dataset.cropRatio, feature: feature, precision: backbone.model.precision)
    let val = try o.cache.features(key: valKey) {
        let progress = ProgressLine(enabled: verbose)
        return try probeFeatures(model: model, feature: feature, folder: data.val,
                                 transform: .eval(size: spec.dataset.imgSize, cropRatio: spec.dataset.cropRatio)) {
            progress.update("extracting", done: $0, total: data.val.count, unit: "images")
        }
    }.set
    let extractSeconds = elapsed(since: valStart)

    var layout = ParameterLayout()
    layout.add("head.weight", [k, d]); layout.add("head.bias", [k])
    let head = ParameterStore(layout: layout)
    var rng = RandomStream(seed: seed)
    let w0 = truncatedNormal(k * d, std: spec.head.initStd ?? 0.01, rng: &rng)
    try head.set("head.weight", shape: [k, d], w0)
    let lars = LARS(count: layout.totalCount, groups: ParameterGroups(layout: layout, depth: 0), weightDecay: Float(a.weightDecay))
    var bn = BatchNorm1d(width: d)
    let useBN = spec.head.batchNorm ?? true
    let lr = Float(a.baseLR) * Float(a.batchSize) / 256
    let schedule = Schedule(baseLR: lr, warmupEpochs: a.warmupEpochs, epochs: Double(a.epochs))
    let scale = spec.recipe.augmentation?.rrcScale ?? [0.08, 1]
    let crop = RandomResizedCrop(size: spec.dataset.imgSize, scale: scale[0]...scale[1])
    let world = Distributed.world
    try model.checkMemory(batch: BatchShard(rank: world.rank, of: world.size, total: min(a.batchSize, data.train.count)).count,
                          training: feature.lastBlocks > 1)
    // Each rank builds its rows of every global batch; the BatchNorm's statistics are the global batch's (SyncBN).
    let loader = DataLoader(source: data.train, transform: MAETransform.train(crop), batchSize: a.batchSize, seed: seed,
                            shuffle: true, dropLast: data.train.count >= a.batchSize, rank: world.rank, of: world.size)
    let w = head.value("head.weight").baseAddress!, bias = head.value("head.bias").baseAddress!

    func evaluate(_ x: [Float], labels: [Int], bn: inout BatchNorm1d) -> HeadScore {
        let n = labels.count
        let z = useBN ? bn.forward(x, batch: n, training: false) : x
        var logits = [Float](repeating: 0, count: n * k)
        z.withUnsafeBufferPointer { zp in
            logits.withUnsafeMutableBufferPointer { lp in
                linearForward(out: lp.baseAddress!, input: zp.baseAddress!, weight: w, bias: bias, rows: n, inDim: d, outDim: k)
            }
        }
        var tally = TopKTally()
        for r in 0..<n { tally.add(logits[(r * k)..<(r * k + k)], label: labels[r]) }
        return HeadScore(tally)
    }

    let setup = "\(spec.dataset.imgSize) px, rrc_scale \(scale[0])...\(scale[1]), batch_norm \(useBN), " +
        "init_std \(spec.head.initStd ?? 0.01), \(data.train.count) train images"
    let expected = ProbeState(seed: seed, checkpointHash: backbone.hash, feature: feature.describe(model), recipe: a,
                              setup: setup, loop: LoopState())
    var resumed: LoopState?
    if FileManager.default.fileExists(atPath: run.checkpoint.path) {
        if o.resume {
            let saved = try readProbeCheckpoint(run.checkpoint, expected: expected, head: head, optimizer: lars)
            (bn.runningMean, bn.runningVar) = (saved.mean, saved.variance)
            resumed = saved.loop
            say("resuming \(run.dir.path) after \(saved.loop.described)", verbose)
        } else {
            say("note: starting \(run.dir.path) afresh (pass --resume to continue its checkpoint)", verbose)
        }
    } else if o.resume {
        say("note: --resume, but \(run.dir.path) holds no checkpoint: starting it afresh", verbose)
    }
    let trainStart = Date()
    let progress = ProgressLine(epochs: a.epochs, stepsPerEpoch: loader.batchCount, enabled: verbose)
    var training = TrainingLoop<TransferEpoch>(
        seed: seed, epochs: a.epochs, schedule: schedule, params: head, optimizer: lars,
        groups: ParameterGroups(layout: layout, depth: 0), loader: loader, total: "loss", blame: model,
        lrAdvice: "lower recipe.augmented.base_lr", logFile: run.log, progress: progress,
        step: { batch, _ in
            let b = batch.count
            let f = try feature.checkedCompute(model, batch: batch, folder: data.train)
            // The BatchNorm has no parameters and nothing before it trains: no backward through it.
            let z = useBN && batch.shard.total > 1 ? try bn.forward(f, batch: b, training: true, world: world) : f
            let logits = Tensor([b, k]), probs = Tensor([b, k]), dLogits = Tensor([b, k])
            let targets = smoothedTargets(labels: batch.labels, classes: k, smoothing: 0)
            var loss: Float = 0
            z.withUnsafeBufferPointer { zp in
                linearForward(out: logits.data, input: zp.baseAddress!, weight: w, bias: bias, rows: b, inDim: d, outDim: k)
                targets.withUnsafeBufferPointer { tp in
                    loss = crossEntropyForward(probs: probs.data, logits: logits.data, targets: tp.baseAddress!, rows: b, classes: k)
                    crossEntropyBackward(dLogits: dLogits.data, probs: probs.data, targets: tp.baseAddress!, rows: b, classes: k)
                }
                linearBackward(dInput: nil, dWeight: head.grad("head.weight").baseAddress!, dBias: head.grad("head.bias").baseAddress!,
                               dOut: dLogits.data, input: zp.baseAddress!, weight: w, rows: b, inDim: d, outDim: k)
            }
            return ["loss": Double(loss)]
        },
        record: { summary in
            .recorded(summary, lr: Double(schedule.lr(atEpoch: Double(summary.epoch))),
                      label: backbone.stem, epochs: a.epochs, progress: progress)
        })
    training.endEpoch = { _ in ["val_top1": evaluate(val.features, labels: val.labels, bn: &bn).top1] }
    training.checkpointEvery = o.checkpointEvery
    training.checkpoint = (run.checkpoint, { loop in
        var state = expected
        state.loop = loop
        try writeProbeCheckpoint(run.checkpoint, state: state, head: head, optimizer: lars, bn: bn)
    })
    let log = try training.run(from: resumed)
    let final = evaluate(val.features, labels: val.labels, bn: &bn)
    guard parameterFingerprint(model) == before else {
        throw TaskError.badArgument("internal check failed: the backbone's weights changed during a linear probe")
    }
    let checks = [
        "backbone frozen: its weights' fingerprint is identical before and after the run; no gradient reaches it",
        "backbone in eval mode: no drop path, no masking; train images through RandomResizedCrop (scale \(scale[0])-\(scale[1])) + flip, val through resize + center crop",
        useBN ? "BatchNorm statistics: the probe head's own BatchNorm1d (no affine, momentum 0.1) from train batches; val uses its running statistics; the backbone has no BatchNorm"
              : "no BatchNorm in the head (head.batch_norm false)",
        "selection: none; the recipe is fixed (MAE's), the last epoch is reported, val is not used to choose anything",
        "feature: \(feature.describe(model))",
    ]
    let metrics = TransferMetrics(
        task: spec.name, evaluation: "linprobe", variant: variant, checkpoint: backbone.url.path, checkpointHash: backbone.hash,
        method: backbone.method, role: backbone.role, top1: final.top1, top5: final.top5, seed: seed,
        recipe: spec.recipeSummary, dataset: data.name, trainData: data.train.root.path, valData: data.val.root.path,
        trainImages: data.train.count, valImages: data.val.count, classes: k, pooling: feature.describe(model),
        selected: nil, grid: nil, protocolChecks: checks,
        timings: ["extract_s": extractSeconds, "train_s": elapsed(since: trainStart), "total_s": elapsed(since: total)],
        epochs: a.epochs, created: timestamp())
    try PerImageResults(classification: data.val, hits: final.top1Hits).write(into: run.dir)
    try run.write(metrics, log: log)
    try run.writeConfig(command: "linprobe", spec: spec, resolved: a, backbone: backbone, seed: seed, data: data,
                        extra: ["variant": variant, "feature": feature.describe(model),
                                "rrc_scale": "\(scale[0])...\(scale[1])", "batch_norm": String(useBN)])
    say("\(backbone.stem) seed \(seed): val top-1 \(String(format: "%.2f", final.top1))%", verbose)
    return run
}

/// The augmented probe's resume state, under `probe_state` in its checkpoint's metadata.
struct ProbeState: Codable {
    var seed: UInt64
    var checkpointHash: String
    var feature: String
    var recipe: AugmentedRecipe
    /// What else shapes the run (image size, crop scale, BatchNorm, head init, train images), in words.
    var setup: String
    var loop: LoopState
}

/// Writes the probe's training checkpoint atomically: the head, the optimizer state as `optim.*`,
/// the BatchNorm's running statistics as `bn.running_mean` / `bn.running_var`, and `state`.
func writeProbeCheckpoint(_ url: URL, state: ProbeState, head: ParameterStore, optimizer: Optimizer, bn: BatchNorm1d) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    var tensors = head.specs.map { ($0.name, StoredTensor(shape: $0.shape, floats: Array(head.value($0.name)))) }
    tensors += optimizer.state.sorted { $0.key < $1.key }.map { ("optim." + $0.key, StoredTensor(shape: [$0.value.count], floats: $0.value)) }
    tensors += [("bn.running_mean", StoredTensor(shape: [bn.runningMean.count], floats: bn.runningMean)),
                ("bn.running_var", StoredTensor(shape: [bn.runningVar.count], floats: bn.runningVar))]
    let metadata = ["format": "mae-eval", "probe_state": String(decoding: try encoder.encode(state), as: UTF8.self)]
    try SafeTensors(tensors: tensors, metadata: metadata).write(to: url)
}

/// Reads a checkpoint of `writeProbeCheckpoint` into `head` and `optimizer`, after checking it was
/// made by the same run (seed, backbone, feature, recipe, setup); returns the BatchNorm statistics
/// and the loop position.
func readProbeCheckpoint(_ url: URL, expected: ProbeState, head: ParameterStore,
                         optimizer: Optimizer) throws -> (mean: [Float], variance: [Float], loop: LoopState) {
    let file = try SafeTensors.read(contentsOf: url)
    guard let json = file.metadata["probe_state"],
          let saved = try? JSONDecoder().decode(ProbeState.self, from: Data(json.utf8)) else {
        throw PathError(url.path, "has no probe_state, so it is not a checkpoint this run can resume")
    }
    if let d = firstDifference(expected.recipe, saved.recipe) {
        throw TaskError.badArgument("recipe.augmented.\(d.field) is \(d.new) but the run being resumed (\(url.path)) used \(d.old); " +
                                    "resume with the same recipe or choose another --out-dir")
    }
    guard saved.seed == expected.seed, saved.checkpointHash == expected.checkpointHash, saved.feature == expected.feature,
          saved.setup == expected.setup else {
        throw TaskError.badArgument("\(url.path) was trained with another seed, backbone, feature or setup (\(saved.setup)) " +
                                    "and cannot be resumed with these")
    }
    func floats(_ name: String, _ count: Int) throws -> [Float] {
        guard let t = file.tensors[name], t.dtype == .f32, t.count == count else {
            throw PathError(url.path, "lacks \(name) with \(count) values")
        }
        return t.floats
    }
    for spec in head.specs { try head.set(spec.name, shape: spec.shape, try floats(spec.name, spec.count)) }
    var moments: [String: [Float]] = [:]
    for (key, current) in optimizer.state { moments[key] = try floats("optim." + key, current.count) }
    optimizer.state = moments
    let width = head.specs[0].shape[1]
    return (try floats("bn.running_mean", width), try floats("bn.running_var", width), saved.loop)
}
