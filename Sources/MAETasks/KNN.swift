import Foundation
import MAEKernels
import MAEFormats
import MAEModels

/// DINO's weighted k-nearest-neighbour classifier (eval_knn.py): features L2-normalised, cosine
/// similarity to every train feature, the k most similar vote for their class with weight
/// exp(sim / T); top-1 and top-5 of the vote (percent).
public func knnClassify(train: [Float], trainLabels: [Int], test: [Float], testLabels: [Int], width d: Int,
                        classes: Int, k: Int = 20, temperature: Float = 0.07) -> HeadScore {
    let n = trainLabels.count, m = testLabels.count
    precondition(train.count == n * d && test.count == m * d && n > 0 && m > 0, "features must be (N, D)")
    let a = l2Normalized(train, width: d), q = l2Normalized(test, width: d)
    let kk = min(k, n), chunk = 256
    var tally = TopKTally()
    var start = 0
    while start < m {
        let rows = min(chunk, m - start)
        var sim = [Float](repeating: 0, count: rows * n)
        q.withUnsafeBufferPointer { qp in
            a.withUnsafeBufferPointer { ap in
                sim.withUnsafeMutableBufferPointer { sp in
                    BLAS.gemm(transB: true, m: rows, n: n, k: d, a: qp.baseAddress! + start * d, lda: d,
                              b: ap.baseAddress!, ldb: d, c: sp.baseAddress!, ldc: n)
                }
            }
        }
        for r in 0..<rows {
            let row = sim[(r * n)..<((r + 1) * n)]
            var votes = [Double](repeating: 0, count: classes)
            if row.allSatisfy(\.isFinite) {
                // The k largest similarities; ties to the lower train index (torch.topk is unspecified).
                let nearest = row.indices.sorted { row[$0] != row[$1] ? row[$0] > row[$1] : $0 < $1 }.prefix(kk)
                // exp((sim - max) / T): the common factor exp(max / T) leaves the vote unchanged and
                // keeps small temperatures from overflowing.
                let top = Double(row[nearest.first!])
                for j in nearest { votes[trainLabels[j - r * n]] += exp((Double(row[j]) - top) / Double(temperature)) }
            } else {
                // A NaN or infinite similarity (a non-finite feature) leaves no valid neighbours: the
                // vote is undefined and the query a miss, whatever the classes.
                votes = [Double](repeating: .nan, count: classes)
            }
            tally.add(votes, label: testLabels[start + r])
        }
        start += rows
    }
    return HeadScore(tally)
}

/// Rows of x (N,D) scaled to unit L2 norm (F.normalize, eps 1e-12).
func l2Normalized(_ x: [Float], width d: Int) -> [Float] {
    var out = x
    for i in 0..<(x.count / d) {
        var s: Float = 0
        for j in 0..<d { s += x[i * d + j] * x[i * d + j] }
        let inv = 1 / max(s.squareRoot(), 1e-12)
        for j in 0..<d { out[i * d + j] *= inv }
    }
    return out
}

/// `mae-eval knn` options beyond the shared ones.
public struct KNNOptions: Sendable {
    public var common = TransferOptions()
    /// nil: the task's (DINO: 20, 0.07).
    public var k: Int?
    public var temperature: Float?
    public var pooling: Pooling?
    public var cache = FeatureCache.standard

    public init() {}
}

/// Runs weighted kNN for every backbone (seeds do not change kNN: it runs once per backbone and
/// the seed is recorded as the task's first).
public func runKNN(_ o: KNNOptions) throws -> [TransferRun] {
    let threads = try ComputeThreads(o.common.threads); defer { threads.restore() }
    let spec = try o.common.taskSpec(default: "shapes-knn")
    guard spec.evaluation == .knn else {
        throw TaskError.badArgument("task \(spec.name) is a \(spec.evaluation.rawValue) task, not a knn task")
    }
    let k = o.k ?? spec.head.k ?? 20, t = o.temperature ?? spec.head.temperature ?? 0.07
    let kName = o.k != nil ? "--k" : "head.k of task \(spec.name)"
    let tName = o.temperature != nil ? "--temperature" : "head.temperature of task \(spec.name)"
    guard k >= 1 else { throw TaskError.badArgument("\(kName) must be at least 1, not \(k)") }
    guard t.isFinite && t > 0 else { throw TaskError.badArgument("\(tName) must be a finite positive number, not \(t)") }
    try o.common.prepareOutputs()
    let backbones = try o.common.backbones()
    let data = try o.common.datasets(spec)
    guard k <= data.train.count else {
        throw TaskError.badArgument("\(kName) \(k) is more neighbours than the \(data.train.count) train images of \(data.train.root.path)")
    }
    var runs: [TransferRun] = []
    for b in backbones {
        let start = Date()
        let backbone = try loadBackbone(b, imgSize: spec.dataset.imgSize, heads: o.common.heads, precision: o.common.precision)
        let feature = ProbeFeature(model: backbone.model, requested: o.pooling ?? spec.head.pooling,
                                   lastBlocks: spec.head.lastBlocks ?? 1)
        let seed = spec.seeds[0]
        let variant = o.common.variant("k \(k), T \(t), \(feature.requested.rawValue)")
        // The run folder is locked for the whole run (a second run into it is refused at once).
        let run = TransferRun(root: o.common.outDir, task: spec.name, variant: variant, backbone: backbone, seed: seed)
        let lock = try run.lock()
        defer { withExtendedLifetime(lock) {} }
        let splits = try cachedSplits(spec: spec, backbone: backbone, feature: feature, data: data, cache: o.cache,
                                      verbose: o.common.verbose)
        let evalStart = Date()
        let score = knnClassify(train: splits.train.features, trainLabels: splits.train.labels, test: splits.val.features,
                                testLabels: splits.val.labels, width: splits.train.width,
                                classes: splits.train.classes.count, k: k, temperature: t)
        let metrics = TransferMetrics(
            task: spec.name, evaluation: "knn", variant: variant, checkpoint: backbone.url.path, checkpointHash: backbone.hash,
            method: backbone.method, role: backbone.role, top1: score.top1, top5: score.top5, seed: seed,
            recipe: "weighted kNN on cosine similarity, k \(k), T \(t), weights exp(sim / T)", dataset: data.name,
            trainData: data.train.root.path, valData: data.val.root.path, trainImages: splits.train.count,
            valImages: splits.val.count, classes: splits.train.classes.count, pooling: feature.describe(backbone.model),
            selected: nil, grid: nil,
            protocolChecks: [
                "backbone frozen and in eval mode: features of the eval transform (resize + center crop), no drop path, no masking",
                "no training and no selection: k and T are fixed (DINO's defaults unless given); val is only queried",
                "feature: \(feature.describe(backbone.model)), L2-normalised",
            ],
            timings: ["extract_s": splits.seconds, "eval_s": elapsed(since: evalStart), "total_s": elapsed(since: start)],
            epochs: 0, created: timestamp())
        try PerImageResults(classification: data.val, hits: score.top1Hits).write(into: run.dir)
        try run.write(metrics, log: [])
        try run.writeConfig(command: "knn", spec: spec, resolved: ["k": Double(k), "temperature": Double(t)], backbone: backbone,
                            seed: seed, data: data, extra: ["variant": variant, "feature": feature.describe(backbone.model)])
        say("\(backbone.stem): kNN val top-1 \(String(format: "%.2f", score.top1))%", o.common.verbose)
        runs.append(run)
    }
    return runs
}
