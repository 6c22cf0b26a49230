import Foundation
import MAEKernels
import MAEModels

/// What `mae-eval bench` measures.
public enum BenchMode: String, CaseIterable, Sendable {
    /// Classifier forward (inference), 1000-class head.
    case forward
    /// Forward + cross-entropy (1000 classes) backward + AdamW step.
    case train
    /// One MAE pretraining step: encoder on visible patches, decoder, loss, backward, AdamW.
    case pretrain
}

public struct BenchOptions: Sendable {
    public var model: String
    public var imgSize: Int
    public var batchSize: Int
    public var mode: BenchMode
    public var maskRatio: Double = 0.75
    public var iters: Int = 5
    public var warmup: Int = 1
    public var profile = false
    /// Compute threads (`--threads`); nil: every core.
    public var threads: Int?
    /// The linear layers' arithmetic (`--precision`).
    public var precision = Precision.fp32

    public init(model: String, imgSize: Int, batchSize: Int, mode: BenchMode, maskRatio: Double = 0.75,
                iters: Int = 5, warmup: Int = 1, profile: Bool = false) {
        self.model = model; self.imgSize = imgSize; self.batchSize = batchSize; self.mode = mode
        self.maskRatio = maskRatio; self.iters = iters; self.warmup = warmup; self.profile = profile
    }
}

/// One JSON line of `mae-eval bench`.
public struct BenchResult: Codable, Sendable {
    public var img_per_s: Double
    public var model: String
    public var mode: String
    public var batch_size: Int
    public var img_size: Int
    public var threads: Int
    public var iters: Int
    public var seconds_per_iter: Double
    public var mask_ratio: Double?
    /// Arithmetic of the linear layers: "fp32" or "bf16".
    public var precision = "fp32"
    /// The matrix library, its version and the kernel it runs on this CPU.
    public var blas = BLASInfo.current
    /// In bf16: the bf16 backend (our kernel, or oneDNN), the ISA it uses and its kernel; absent in fp32.
    public var bf16: BF16Info?
    /// With --profile: share of the time per kernel family (gemm outside attention, attention, ...).
    public var time_share: [String: Double]?
}

/// Times `iters` steps (after `warmup` untimed ones) of the chosen mode on random weights and inputs.
public func runBenchmark(_ o: BenchOptions) throws -> BenchResult {
    if let dense = DenseBenchPreset(rawValue: o.model.lowercased()) { return try runDenseBenchmark(o, dense) }
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    guard let preset = ModelPreset(name: o.model) else { throw ModelError.unknownPreset(o.model) }
    guard o.batchSize > 0, o.iters > 0 else { throw TaskError.badArgument("--batch-size and --iters must be positive") }
    guard (0..<1).contains(o.maskRatio) else { throw TaskError.badArgument("--mask-ratio must be in [0, 1)") }
    var config = preset.config
    config.imgSize = o.imgSize
    switch o.mode {
    case .forward, .train: config.numClasses = 1000; config.pooling = .avg
    case .pretrain: config.decoder = preset.decoder
    }
    let model = try VisionTransformer(config: config)
    model.precision = o.precision
    let b = o.batchSize
    try model.checkMemory(batch: b, training: o.mode != .forward, maskRatio: o.mode == .pretrain ? o.maskRatio : 0)
    model.initializeWeights(seed: 0, headStd: 0.02)
    var rng = RandomStream(seed: 1)
    let images = Tensor([b, config.inChans, config.imgSize, config.imgSize])
    for i in 0..<images.count { images[i] = Float(rng.normal()) }
    let labels = (0..<b).map { _ in rng.below(1000) }
    let targets = smoothedTargets(labels: labels, classes: 1000, smoothing: 0.1)
    let groups = ParameterGroups(layout: model.params.layout, depth: config.depth, noDecay: ["pos_embed", "cls_token"])
    let optimizer = AdamW(count: model.params.layout.totalCount, groups: groups, beta2: 0.95)

    func step(_ i: Int) {
        switch o.mode {
        case .forward:
            _ = model.forwardLogits(images: images.data, batch: b)
        case .train:
            model.params.zeroGrads()
            let pass = model.forwardLogits(images: images.data, batch: b, training: true, seed: UInt64(i))
            _ = model.classificationLoss(pass, targets: targets)
            model.backwardClassification(pass)
            optimizer.step(model.params, lr: 1e-4)
        case .pretrain:
            model.params.zeroGrads()
            let noise = (0..<(b * config.numPatches)).map { _ in rng.nextFloat() }
            let mask = PatchMask(noise: noise, batch: b, numPatches: config.numPatches, maskRatio: o.maskRatio)
            let encoded = model.forwardEncoder(images: images.data, batch: b, mask: mask, training: true, seed: UInt64(i))
            let decoded = model.forwardDecoder(encoded)
            _ = model.forwardLoss(decoded, images: images.data)
            model.backwardPretrain(decoded)
            optimizer.step(model.params, lr: 1e-4)
        }
    }
    for i in 0..<o.warmup { step(i) }
    Profiler.reset()
    Profiler.enabled = o.profile
    let start = DispatchTime.now().uptimeNanoseconds
    for i in 0..<o.iters { step(o.warmup + i) }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
    Profiler.enabled = false
    var share: [String: Double]?
    if o.profile {
        var s = Dictionary(uniqueKeysWithValues: Profiler.seconds.map { ($0.key.rawValue, $0.value / seconds) })
        s["rest"] = 1 - s.values.reduce(0, +)
        share = s.mapValues { ($0 * 1000).rounded() / 1000 }
    }
    return BenchResult(img_per_s: Double(b * o.iters) / seconds, model: preset.rawValue, mode: o.mode.rawValue,
                       batch_size: b, img_size: config.imgSize, threads: Parallel.workers, iters: o.iters,
                       seconds_per_iter: seconds / Double(o.iters),
                       mask_ratio: o.mode == .pretrain ? o.maskRatio : nil, precision: o.precision.rawValue,
                       bf16: o.precision == .bf16 ? BF16Info.current : nil, time_share: share)
}

/// Errors in a task's arguments or inputs; each reads as one sentence.
public enum TaskError: Error, CustomStringConvertible {
    case badArgument(String)

    public var description: String {
        switch self {
        case .badArgument(let s): s.hasSuffix(".") ? s : s + "."
        }
    }
}
