import Foundation
import MAEJSON
import MAEData
import MAEDistributed
import MAEFormats
import MAEKernels
import MAEModels

/// A per-step learning-rate schedule: linear warmup from 0 to `baseLR` over `warmupEpochs`, then a
/// decay. `epoch` is fractional (epochs done + step / steps per epoch), as MAE updates per step.
public struct Schedule: Sendable, Equatable {
    public enum Decay: Sendable, Equatable {
        /// Half-cycle cosine down to `minLR` at `epochs` (MAE's adjust_learning_rate).
        case cosine
        /// `baseLR` x gamma^(milestones passed), milestones in epochs (detectron2's MultiStepLR).
        case step(milestones: [Double], gamma: Double)
        /// minLR + (baseLR - minLR) (1 - progress)^power over the epochs after warmup (mmseg's poly).
        case poly(power: Double)
    }

    public var baseLR: Float, minLR: Float, warmupEpochs: Double, epochs: Double, decay: Decay
    /// Where the step and poly warmups start, as a fraction of `baseLR` (detectron2's warmup_factor,
    /// ViTDet 0.001): lr = baseLR (f + (1 - f) epoch / warmupEpochs). The cosine warmup starts at 0.
    public var warmupFactor: Float = 0

    public init(baseLR: Float, minLR: Float = 0, warmupEpochs: Double, epochs: Double, decay: Decay = .cosine,
                warmupFactor: Float = 0) {
        self.baseLR = baseLR; self.minLR = minLR; self.warmupEpochs = warmupEpochs; self.epochs = epochs; self.decay = decay
        self.warmupFactor = warmupFactor
    }

    /// The step and poly schedules' linear warmup at `epoch` < `warmupEpochs`.
    func warmup(_ epoch: Double) -> Float {
        baseLR * (warmupFactor + (1 - warmupFactor) * Float(epoch / warmupEpochs))
    }

    /// The learning rate at fractional `epoch`.
    public func lr(atEpoch epoch: Double) -> Float {
        switch decay {
        case .cosine:
            return WarmupCosine(baseLR: baseLR, minLR: minLR, warmupEpochs: warmupEpochs, epochs: epochs).lr(atEpoch: epoch)
        case .step(let milestones, let gamma):
            if epoch < warmupEpochs { return warmup(epoch) }
            return baseLR * Float(pow(gamma, Double(milestones.filter { $0 <= epoch }.count)))
        case .poly(let power):
            if epoch < warmupEpochs { return warmup(epoch) }
            let progress = min((epoch - warmupEpochs) / max(epochs - warmupEpochs, 1e-12), 1)
            return minLR + (baseLR - minLR) * Float(pow(1 - progress, power))
        }
    }
}

/// What a task's step sees besides its batch.
public struct StepContext {
    /// From 1.
    public let epoch: Int
    /// From 0, within the epoch.
    public let step: Int
    /// This step's learning rate (the optimizer step after the closure uses it).
    public let lr: Float
    /// The step's own random stream: (seed).derived(epoch).derived(step). Tasks derive sub-streams
    /// from it (masking noise, drop path, mixup), so every draw is a pure function of (seed, epoch, step).
    public let stream: RandomStream

    /// "epoch 2, step 3" (step from 1), for messages.
    public var place: String { "epoch \(epoch), step \(step + 1)" }
}

/// How an epoch's mean loss terms are formed.
public enum LossMean: Sendable {
    /// The mean of the steps' values (pretraining).
    case perStep
    /// Weighted by each batch's image count (fine-tuning, linear probe).
    case perImage
}

/// What the loop knows of a finished epoch, for the task's log line.
public struct EpochSummary {
    /// From 1.
    public var epoch: Int
    /// Each loss term's mean over the epoch, by name.
    public var terms: [String: Double]
    /// The learning rate of the epoch's last step.
    public var lastLR: Float
    /// Wall clock (not part of a bit-identical resume): this process's part of the epoch.
    public var imagesPerSecond: Double, seconds: Double
    /// The end-of-epoch closure's numbers (evaluation), by name.
    public var evaluation: [String: Double]
}

/// A log line that knows its epoch (a resumed run drops lines past its checkpoint).
public protocol EpochLine: Codable {
    var epoch: Int { get }
}

/// Where a training loop stands: stored in every training checkpoint, so a resume continues the
/// same epoch at the same step with the same running sums.
public struct LoopState: Codable, Equatable, Sendable {
    /// Completed epochs.
    public var epoch = 0
    /// Completed steps of epoch `epoch + 1`.
    public var step = 0
    /// The running sums of the loss terms of the current epoch, as Double bit patterns (JSON
    /// numbers need not round-trip every bit).
    public var sumBits: [String: UInt64] = [:]
    /// Steps or images summed (see `LossMean`).
    public var weight = 0

    public init(epoch: Int = 0) { self.epoch = epoch }

    var sums: [String: Double] { sumBits.mapValues { Double(bitPattern: $0) } }

    mutating func add(_ terms: [String: Double], weight w: Int) {
        for (name, value) in terms {
            sumBits[name] = (Double(bitPattern: sumBits[name] ?? 0) + value * Double(w)).bitPattern
        }
        weight += w
    }

    /// "epoch 2" at an epoch's end, "epoch 3, step 4" within one.
    var described: String { step == 0 ? "epoch \(epoch)" : "epoch \(epoch + 1), step \(step)" }
}

/// A training loss above its limit: the run diverged. The one divergence error of every training
/// loop (a non-finite loss is a `NonFiniteError`, which also says whether the weights are broken).
public struct TrainingDiverged: Error, LocalizedError, CustomStringConvertible {
    public var place: String, loss: Float, limit: Float, advice: String, kept: String
    public var description: String {
        "Training stopped at \(place): the loss is \(loss), above its limit \(limit), so training diverged; \(advice); \(kept)."
    }
    public var errorDescription: String? { description }
}

/// The one training loop: pretraining (MAE and supervised), fine-tuning and the augmented linear
/// probe run through it, each supplying its step.
///
/// Per step it sets the learning rate from `schedule`, zeroes the gradients, calls `step` (forward,
/// loss, backward; returns the loss terms by name), stops on a non-finite or diverging total, calls
/// `gradientHook`, averages the gradients over the ranks under MPI (`dataParallel`), clips to
/// `clipNorm`, and steps the optimizer.
/// At each epoch's end it calls `endEpoch` (evaluation), appends the task's log line to `logFile`,
/// and saves a checkpoint; with `checkpointEvery` also every that many steps within an epoch.
///
/// Resume is bit-identical: batch k of epoch e is a pure function of (seed, e, k) (the loader
/// starts an epoch at any batch), every step draws from `StepContext.stream`, and the checkpoint
/// holds the weights, the optimizer state and `LoopState` (epoch, step, running sums).
///
/// Under `mpirun -np N` the loop is data-parallel (`DataParallel`): the loader must be this rank's
/// shard (`DataLoader(rank:of:)`), the loss terms and gradients are reduced over the ranks every
/// step, and only rank 0 writes the log and the checkpoints. Nothing in the checkpoint depends on
/// the rank count, so a run resumes on the same or another number of ranks.
public struct TrainingLoop<Entry: EpochLine> {
    public var seed: UInt64
    public var epochs: Int
    public var schedule: Schedule
    public var params: ParameterStore
    public var optimizer: Optimizer
    /// Which parameters clipping sees (frozen ones are left out).
    public var groups: ParameterGroups
    public var loader: DataLoader
    /// The loss term that is the total (divergence is judged on it; the progress line shows it).
    public var total: String
    public var mean: LossMean = .perImage
    /// torch's clip_grad_norm_ max norm; nil: no clipping.
    public var clipNorm: Float?
    /// A total above this stops the run (`TrainingDiverged`); nil: only a non-finite total does.
    public var lossLimit: Float?
    /// The model whose weights a non-finite loss is blamed on (`NonFiniteError.loss`).
    public var blame: VisionTransformer
    /// Advice in divergence messages ("lower --blr").
    public var lrAdvice: String
    /// Before "epoch 2, step 3" in messages ("fine-tuning "), may be empty.
    public var stage = ""
    /// Also checkpoint every this many steps within an epoch; nil: at epoch ends only.
    public var checkpointEvery: Int?
    /// Stop after this many epochs as if killed there (tests of resume).
    public var stopAfterEpoch: Int?
    public var logFile: URL
    /// The checkpoint file (messages), and the writer of weights + optimizer state + loop state,
    /// atomically; nil: the task keeps no checkpoint.
    public var checkpoint: (url: URL, save: (LoopState) throws -> Void)?
    public var progress: ProgressLine
    /// Called after the backward and before the optimizer step, on the flat gradient buffer (this
    /// rank's gradients, before the ranks' average).
    public var gradientHook: ((ParameterStore) -> Void)?
    /// The ranks' reduction; nil (one process) unless a launcher started several. Set from
    /// `Distributed.world` by `init`.
    public var dataParallel = DataParallel()
    /// The task's step: forward, loss, backward into `params.grads`; returns its loss terms by name.
    public var step: (Batch, StepContext) throws -> [String: Double]
    /// The end-of-epoch closure (from 1): evaluation numbers for the log.
    public var endEpoch: (Int) throws -> [String: Double] = { _ in [:] }
    /// The task's log line for a finished epoch.
    public var record: (EpochSummary) throws -> Entry

    public init(seed: UInt64, epochs: Int, schedule: Schedule, params: ParameterStore, optimizer: Optimizer,
                groups: ParameterGroups, loader: DataLoader, total: String, blame: VisionTransformer, lrAdvice: String,
                logFile: URL, progress: ProgressLine, step: @escaping (Batch, StepContext) throws -> [String: Double],
                record: @escaping (EpochSummary) throws -> Entry) {
        self.seed = seed; self.epochs = epochs; self.schedule = schedule; self.params = params
        self.optimizer = optimizer; self.groups = groups; self.loader = loader; self.total = total
        self.blame = blame; self.lrAdvice = lrAdvice; self.logFile = logFile; self.progress = progress
        self.step = step; self.record = record
    }

    /// Runs from `saved` (a resumed checkpoint's state; nil: a new run) to `epochs` (or
    /// `stopAfterEpoch`); returns the whole log, earlier epochs included.
    public func run(from saved: LoopState?) throws -> [Entry] {
        try dataParallel?.check(loader, flag: "the batch size")
        let writes = dataParallel?.world.isMain ?? true
        var state = saved ?? LoopState()
        var log = saved == nil ? [] : try readJSONLines(Entry.self, from: logFile).filter { $0.epoch <= state.epoch }
        if writes { try writeJSONLines(log, to: logFile) }
        let steps = loader.batchCount
        let lastEpoch = min(epochs, stopAfterEpoch ?? epochs)
        var lastSaved: LoopState? = saved
        let runStart = Date()
        let stepsAtStart = state.epoch * steps + state.step
        while state.epoch < lastEpoch {
            let epoch = state.epoch + 1
            let epochStart = Date()
            var imagesThisRun = 0, lr: Float = 0
            let batches = loader.epoch(epoch, from: state.step)
            while let batch = try batches.next() {
                lr = schedule.lr(atEpoch: Double(epoch - 1) + Double(state.step) / Double(steps))
                let context = StepContext(epoch: epoch, step: state.step, lr: lr,
                                          stream: RandomStream(seed: seed).derived(UInt64(epoch)).derived(UInt64(state.step)))
                params.zeroGrads()
                var terms = try step(batch, context)
                if let dataParallel { terms = try dataParallel.reduce(terms, shard: batch.shard) }
                try check(terms[total] ?? .nan, context, kept: kept(lastSaved))
                gradientHook?(params)
                try dataParallel?.averageGradients(params, shard: batch.shard)
                if let clipNorm { clipGradNorm(params, groups: groups, maxNorm: clipNorm) }
                optimizer.step(params, lr: lr)
                // The global batch's images: the same sums and rates on any number of ranks.
                state.add(terms, weight: mean == .perImage ? batch.shard.total : 1)
                state.step += 1
                imagesThisRun += batch.shard.total
                let rate = Double(imagesThisRun) / max(elapsed(since: epochStart), 1e-9)
                let done = Double((state.epoch * steps + state.step) - stepsAtStart)
                let left = Double(lastEpoch * steps) - Double(state.epoch * steps + state.step)
                let means = state.sums.mapValues { $0 / Double(max(state.weight, 1)) }
                progress.update(epoch: epoch, step: state.step, loss: means[total] ?? .nan, terms: means.filter { $0.key != total },
                                imagesPerSecond: rate, secondsLeft: elapsed(since: runStart) / done * left)
                if let checkpoint, let n = checkpointEvery, state.step % n == 0, state.step < steps {
                    if writes { try checkpoint.save(state) }
                    lastSaved = state
                }
            }
            let evaluation = try endEpoch(epoch)
            let seconds = elapsed(since: epochStart)
            let summary = EpochSummary(epoch: epoch, terms: state.sums.mapValues { $0 / Double(max(state.weight, 1)) },
                                       lastLR: lr, imagesPerSecond: Double(imagesThisRun) / seconds, seconds: seconds,
                                       evaluation: evaluation)
            progress.endEpoch(epoch: epoch, loss: summary.terms[total] ?? .nan, terms: summary.terms.filter { $0.key != total },
                              imagesPerSecond: summary.imagesPerSecond,
                              secondsLeft: Double(lastEpoch - epoch) * seconds)
            // The log line goes first: a run killed before the checkpoint redoes the epoch and rewrites it.
            log.append(try record(summary))
            if writes { try writeJSONLines(log, to: logFile) }
            state = LoopState(epoch: epoch)
            if let checkpoint {
                if writes { try checkpoint.save(state) }
                lastSaved = state
            }
        }
        return log
    }

    /// What a stopped run keeps, for the error's last clause.
    func kept(_ saved: LoopState?) -> String {
        guard let checkpoint, let saved, saved.epoch > 0 || saved.step > 0 else {
            return "no epoch had completed, so there is no checkpoint"
        }
        return "the last good checkpoint (\(saved.described)) is kept at \(checkpoint.url.path)"
    }

    /// Stops on a non-finite total (blaming the weights or the run) or one above `lossLimit`.
    func check(_ loss: Double, _ context: StepContext, kept: String) throws {
        let value = Float(loss)
        let place = stage + context.place
        guard value.isFinite else {
            throw NonFiniteError.loss(value, at: place, model: blame, updated: context.epoch > 1 || context.step > 0,
                                      lrAdvice: lrAdvice, context: kept)
        }
        if let lossLimit, value > lossLimit {
            throw TrainingDiverged(place: place, loss: value, limit: lossLimit, advice: lrAdvice, kept: kept)
        }
    }
}

// MARK: - log.jsonl

/// Reads a JSON-lines file of `T` (empty when the file is missing).
func readJSONLines<T: Decodable>(_ type: T.Type, from url: URL) throws -> [T] {
    guard let data = try? Data(contentsOf: url) else { return [] }
    let decoder = JSONDecoder()
    return try String(decoding: data, as: UTF8.self).split(separator: "\n").map { line in
        do { return try decoder.decode(T.self, from: Data(line.utf8)) } catch {
            throw PathError(url, "has a line that is not an epoch record: \(line.prefix(80))", period: false)
        }
    }
}

/// Writes `entries` as JSON lines (sorted keys), atomically.
func writeJSONLines<T: Encodable>(_ entries: [T], to url: URL) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    var text = ""
    for entry in entries { text += String(decoding: try encoder.encode(entry), as: UTF8.self) + "\n" }
    try writeAtomically(Data(text.utf8), to: url)
}
