import Foundation
import MAEData
import MAEDistributed
import MAEFormats
import MAEJSON
import MAEKernels
import MAEModels

/// The frozen feature a probe reads: pooling of the last `lastBlocks` blocks, concatenated.
public struct ProbeFeature: Sendable, Equatable {
    /// Asked for (`--pool`).
    public var requested: Pooling
    /// Used: `.cls` needs a final `norm`; a global-pool checkpoint (fc_norm, no norm) gives `.avg`,
    /// its own trained feature, since its cls token was never trained as an output.
    public var pooling: Pooling
    public var lastBlocks: Int

    public init(model: VisionTransformer, requested: Pooling, lastBlocks: Int) {
        self.requested = requested
        self.lastBlocks = lastBlocks
        pooling = requested == .cls && model.params.spec("norm.weight") == nil ? .avg : requested
    }

    /// As the report states it.
    public func describe(_ model: VisionTransformer) -> String {
        let hasNorm = model.params.spec("norm.weight") != nil
        var s = pooling == .cls ? "cls token after the final norm" :
            (hasNorm ? "mean of patch tokens after the final norm" : "mean of patch tokens + fc_norm")
        if lastBlocks > 1 { s += ", last \(lastBlocks) blocks concatenated" }
        if pooling != requested { s += " (cls asked; the checkpoint is a global-pool model without a final norm)" }
        return s
    }

    public func width(_ model: VisionTransformer) -> Int { lastBlocks * model.config.embedDim }

    /// `compute` on a loader batch of `folder`, checked where the features are made: a NaN or Inf
    /// throws a `NonFiniteError` naming the first bad image and the backbone stage that first went
    /// non-finite on it.
    public func checkedCompute(_ model: VisionTransformer, batch: Batch, folder: ImageFolder) throws -> [Float] {
        let f = batch.images.withUnsafeBufferPointer { compute(model, images: $0.baseAddress!, batch: batch.count) }
        guard let bad = NonFiniteCount(f) else { return f }
        let w = width(model), row = bad.first / w
        let stage = batch.images.withUnsafeBufferPointer {
            model.firstNonFiniteStage(images: $0.baseAddress!, batch: batch.count, row: row)
        }
        throw NonFiniteError.image(folder.samples[batch.indices[row]].url.path, "features",
                                   NonFiniteCount(Array(f[(row * w)..<((row + 1) * w)]))!, of: w, stage: stage)
    }

    /// Features (B, lastBlocks * D) of one normalised batch, backbone in eval mode (no drop path).
    public func compute(_ model: VisionTransformer, images: UnsafePointer<Float>, batch b: Int) -> [Float] {
        model.forwardFeatures(images: images, batch: b, pooling: pooling, lastBlocks: lastBlocks).features.array
    }
}

/// Features of every image of `folder` through `transform` (one pass, dataset order);
/// `progress(imagesDone)` after each batch. Each batch's features are checked where they are made:
/// a NaN or Inf stops the pass with a `NonFiniteError` naming the image and the stage of the
/// backbone that first went non-finite.
///
/// Under MPI the batches are dealt to the ranks (rank r computes batches r, r + N, ...: each the
/// batch one process computes) and gathered, so every rank returns the one-process features, bit
/// for bit; `progress` then counts the images of the batches dealt so far.
public func probeFeatures(model: VisionTransformer, feature: ProbeFeature, folder: ImageFolder,
                          transform: MAETransform, batchSize: Int = 64, seed: UInt64 = 0, epoch: Int = 0,
                          workers: Int = 2, world: World = Distributed.world,
                          progress: ((Int) -> Void)? = nil) throws -> FeatureSet {
    guard folder.count > 0 else { throw PathError(folder.root, "has no images", period: false) }
    // Refused here, before the loader or the model allocates anything, when it cannot fit.
    try model.checkMemory(batch: min(batchSize, folder.count), training: feature.lastBlocks > 1)
    let w = feature.width(model)
    let loader = DataLoader(source: folder, transform: transform, batchSize: batchSize, seed: seed,
                            shuffle: false, workers: workers)
    var features = [Float](repeating: 0, count: folder.count * w)
    let labels = (0..<folder.count).map(folder.label)
    let dealt = { (rank: Int) in Array(stride(from: rank, to: loader.batchCount, by: world.size)) }
    let it = loader.epoch(epoch, batches: dealt(world.rank))
    var mine: [Float] = [], batchesDone = 0
    while let batch = try it.next() {
        let f = try feature.checkedCompute(model, batch: batch, folder: folder)
        for (row, index) in batch.indices.enumerated() {
            for i in 0..<w { features[index * w + i] = f[row * w + i] }
        }
        if world.size > 1 { mine += f }
        batchesDone += 1
        progress?(min(batchesDone * world.size * batchSize, folder.count))
    }
    if world.size > 1 {
        // Every rank's rows, in the order of its batches, placed by the batches' dataset indices.
        let parts = try mine.withUnsafeBytes { try world.allGather(Array($0), "gathering the features") }
        let order = loader.order(epoch: epoch)
        for (rank, part) in parts.enumerated() where rank != world.rank {
            let rows = part.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
            var row = 0
            for b in dealt(rank) {
                for index in order[(b * batchSize)..<min(order.count, (b + 1) * batchSize)] {
                    for i in 0..<w { features[index * w + i] = rows[row * w + i] }
                    row += 1
                }
            }
        }
    }
    return FeatureSet(features: features, labels: labels, width: w, classes: folder.classes)
}

/// On-disk cache of eval-transform features, keyed by the checkpoint's content, the data (file
/// paths and sizes), the transform and the feature; a changed image file size or a retrained
/// checkpoint misses the cache.
public struct FeatureCache: Sendable {
    public var folder: URL
    /// The installation's cache (`<home>/.mae-eval/cache/features`, or under `MAE_EVAL_CACHE`).
    public static let standard = FeatureCache(folder: Installation.current.featureCache)

    public init(folder: URL) { self.folder = folder }

    /// The cache key of a split's features; bf16 features get keys of their own (fp32 keys are those
    /// written before the bf16 path existed).
    public func key(checkpointHash: String, data: ImageFolder, imgSize: Int, cropRatio: Double,
                    feature: ProbeFeature, precision: Precision = .fp32) -> String {
        var text = "v1|\(checkpointHash)|\(data.root.standardizedFileURL.path)|\(imgSize)|\(cropRatio)|" +
            "\(feature.pooling.rawValue)|\(feature.lastBlocks)|\(data.classes.joined(separator: ","))"
        if precision != .fp32 { text += "|\(precision.rawValue)" }
        for s in data.samples {
            let size = (try? FileManager.default.attributesOfItem(atPath: s.url.path)[.size] as? Int) ?? -1
            text += "|\(s.url.lastPathComponent):\(s.label):\(size ?? -1)"
        }
        return fnv1a(Data(text.utf8))
    }

    /// Cached features, or computed and stored. `hit` says which. Under MPI it is a hit only when
    /// every rank finds the file (a node-local cache may differ), since computing is collective.
    public func features(key: String, world: World = Distributed.world,
                         compute: () throws -> FeatureSet) throws -> (set: FeatureSet, hit: Bool) {
        let url = folder.appendingPathComponent(key + ".safetensors")
        // A cached file with non-finite features (written before they were checked) is a miss: the
        // recomputation names the image.
        var cached: FeatureSet?
        if let file = try? SafeTensors.read(contentsOf: url), let f = file.tensors["features"], let l = file.tensors["labels"],
           f.shape.count == 2, f.dtype == .f32, f.nonFiniteCount == nil, let json = file.metadata["classes"],
           let classes = try? JSONDecoder().decode([String].self, from: Data(json.utf8)) {
            cached = FeatureSet(features: f.floats, labels: l.int64s.map { Int($0) }, width: f.shape[1], classes: classes)
        }
        var misses = [cached == nil ? 1.0 : 0]
        try world.allReduceSum(&misses, "agreeing on the feature cache")
        if let cached, misses[0] == 0 { return (cached, true) }
        let set = try compute()
        try? FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let meta = ["classes": String(decoding: try JSONEncoder().encode(set.classes), as: UTF8.self)]
        // A cache that cannot be written only costs time next run; under MPI rank 0 writes it.
        if Distributed.world.isMain { try? set.write(to: url, metadata: meta) }
        return (set, false)
    }
}

/// BatchNorm1d without affine, as MAE's probe head: training mode normalises with the batch's
/// mean and biased variance and updates running stats (momentum 0.1, unbiased variance as
/// PyTorch); eval mode normalises with the running stats. eps 1e-6 as MAE's
/// `BatchNorm1d(affine=False, eps=1e-6)`.
public struct BatchNorm1d: Sendable {
    public var runningMean: [Float]
    public var runningVar: [Float]
    public var momentum: Float = 0.1
    public var eps: Float = 1e-6

    public init(width: Int) {
        runningMean = .init(repeating: 0, count: width)
        runningVar = .init(repeating: 1, count: width)
    }

    /// x (B,D) -> normalised (B,D). Training mode needs B > 1 for the unbiased running variance.
    public mutating func forward(_ x: [Float], batch b: Int, training: Bool) -> [Float] {
        let d = runningMean.count
        var out = [Float](repeating: 0, count: b * d)
        for j in 0..<d {
            var mean: Float, variance: Float
            if training {
                var s: Double = 0, ss: Double = 0
                for i in 0..<b { s += Double(x[i * d + j]) }
                let m = s / Double(b)
                for i in 0..<b { let e = Double(x[i * d + j]) - m; ss += e * e }
                mean = Float(m); variance = Float(ss / Double(b))
                let unbiased = Float(ss / Double(max(b - 1, 1)))
                runningMean[j] = (1 - momentum) * runningMean[j] + momentum * mean
                runningVar[j] = (1 - momentum) * runningVar[j] + momentum * unbiased
            } else {
                mean = runningMean[j]; variance = runningVar[j]
            }
            let r = 1 / (variance + eps).squareRoot()
            for i in 0..<b { out[i * d + j] = (x[i * d + j] - mean) * r }
        }
        return out
    }
    /// `forward` with the ranks of `world` as one batch (SyncBatchNorm): in training mode x (B,D) is
    /// this rank's rows of the global batch, normalised with the whole batch's mean and biased
    /// variance (`SyncBatchStatistics`), and the running statistics take its unbiased variance, so
    /// every rank keeps the same ones. One process, or eval mode, is `forward(_:batch:training:)`.
    public mutating func forward(_ x: [Float], batch b: Int, training: Bool, world: World) throws -> [Float] {
        guard training, world.size > 1 else { return forward(x, batch: b, training: training) }
        let d = runningMean.count
        var sum = [Double](repeating: 0, count: d), squares = [Double](repeating: 0, count: d)
        for i in 0..<b {
            for j in 0..<d {
                let v = Double(x[i * d + j])
                sum[j] += v
                squares[j] += v * v
            }
        }
        let stats = try SyncBatchStatistics.reduced(sum: sum, sumOfSquares: squares, count: b, world: world)
        let n = Double(stats.count)
        var out = [Float](repeating: 0, count: b * d)
        for j in 0..<d {
            let mean = Float(stats.mean[j]), variance = Float(stats.variance[j])
            let unbiased = Float(stats.variance[j] * n / max(n - 1, 1))
            runningMean[j] = (1 - momentum) * runningMean[j] + momentum * mean
            runningVar[j] = (1 - momentum) * runningVar[j] + momentum * unbiased
            let r = 1 / (variance + eps).squareRoot()
            for i in 0..<b { out[i * d + j] = (x[i * d + j] - mean) * r }
        }
        return out
    }
}
