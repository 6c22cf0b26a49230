import Foundation
import MAEKernels

/// A protocol's metrics recomputed on a bootstrap resample of its validation images.
public protocol PerImageStatistic: Sendable {
    /// Image ids in val order (pairing checks them).
    var images: [String] { get }
    /// Every metric (percent, keyed as in `metrics.json`) on the images weighted by `counts`
    /// ([images], how often each was drawn; all ones: the metric of the run itself).
    func values(counts: [Int]) -> [String: Double]
}

/// The statistic of a run's `per_image.json`: classification (hits), segmentation (areas) or
/// detection (COCO eval re-run on the resampled images from `detections.json` and the ground truth).
/// - Throws: `TaskError` naming the run folder for a kind no statistic exists for.
public func perImageStatistic(_ results: PerImageResults, run: URL) throws -> PerImageStatistic {
    switch results.kind {
    case "classification":
        guard let correct = results.correct else {
            throw TaskError.badArgument("\(run.path)/\(PerImageResults.fileName) is a classification file without `correct`")
        }
        return ClassificationStatistic(images: results.images, correct: correct)
    case "segmentation":
        guard let i = results.intersect, let u = results.union, let l = results.labelArea else {
            throw TaskError.badArgument("\(run.path)/\(PerImageResults.fileName) is a segmentation file without intersect, union and label_area")
        }
        return SegmentationStatistic(images: results.images, intersect: i, union: u, labelArea: l)
    case "detection":
        return try DetectionStatistic(results, run: run)
    default:
        throw TaskError.badArgument("\(run.path)/\(PerImageResults.fileName) holds '\(results.kind)' results, for which no bootstrap statistic exists yet")
    }
}

/// Top-1 (percent) from per-image hits: 100 x sum(counts x correct) / sum(counts).
public struct ClassificationStatistic: PerImageStatistic {
    public var images: [String]
    public var correct: [Int]

    public init(images: [String], correct: [Int]) { self.images = images; self.correct = correct }

    public func values(counts: [Int]) -> [String: Double] {
        var hits = 0, total = 0
        for i in counts.indices { hits += counts[i] * correct[i]; total += counts[i] }
        return ["top1": 100 * Double(hits) / Double(max(total, 1))]
    }
}

/// mIoU, mAcc and aAcc (percent) from per-image per-class areas, as mmseg's `total_area_to_metrics`
/// on the summed areas: IoU_c = I_c / U_c, Acc_c = I_c / L_c, a class with no pixels (0 / 0) left out
/// of the means (nanmean), aAcc = sum I / sum L.
public struct SegmentationStatistic: PerImageStatistic {
    public var images: [String]
    /// [images][classes] pixel counts.
    public var intersect: [[Double]], union: [[Double]], labelArea: [[Double]]

    public init(images: [String], intersect: [[Double]], union: [[Double]], labelArea: [[Double]]) {
        self.images = images; self.intersect = intersect; self.union = union; self.labelArea = labelArea
    }

    public func values(counts: [Int]) -> [String: Double] {
        let classes = intersect.first?.count ?? 0
        var i = [Double](repeating: 0, count: classes), u = i, l = i
        for n in counts.indices where counts[n] > 0 {
            let w = Double(counts[n])
            for c in 0..<classes { i[c] += w * intersect[n][c]; u[c] += w * union[n][c]; l[c] += w * labelArea[n][c] }
        }
        func nanMean(_ xs: [Double]) -> Double {
            let kept = xs.filter { !$0.isNaN }
            return kept.isEmpty ? .nan : kept.reduce(0, +) / Double(kept.count)
        }
        let iou = (0..<classes).map { u[$0] > 0 ? i[$0] / u[$0] : .nan }
        let acc = (0..<classes).map { l[$0] > 0 ? i[$0] / l[$0] : .nan }
        return ["mIoU": 100 * nanMean(iou), "mAcc": 100 * nanMean(acc),
                "aAcc": 100 * i.reduce(0, +) / max(l.reduce(0, +), 1)]
    }
}

/// How the transfer report's intervals are drawn (stated in the report).
public struct BootstrapSettings: Sendable, Codable, Equatable {
    /// Resamples of the validation images.
    public var resamples = 10_000
    /// Resamples for detection, where each is two COCO evals per run (`--bootstrap-detection-resamples`).
    public var detectionResamples = 200
    /// Resample r draws its images from `RandomStream(seed: seed, epoch: r, index: 0)`.
    public var seed: UInt64 = 0
    /// Central interval: 0.95 gives the 2.5th and 97.5th percentiles.
    public var confidence = 0.95

    public init() {}
}

/// A delta (A - B) with its paired-bootstrap interval.
public struct DeltaInterval: Sendable, Codable, Equatable {
    /// On all images: mean over A's seeds minus mean over B's seeds.
    public var delta: Double
    public var low: Double
    public var high: Double
    /// Whether the interval leaves out 0 (only then does a cell claim a difference).
    public var significant: Bool { low > 0 || high < 0 }
}

/// The n indices resample r draws from n images, uniformly with replacement, as counts per image.
public func bootstrapCounts(images n: Int, resample r: Int, seed: UInt64) -> [Int] {
    var rng = RandomStream(seed: seed, epoch: r, index: 0)
    var counts = [Int](repeating: 0, count: n)
    for _ in 0..<n { counts[rng.below(n)] += 1 }
    return counts
}

/// numpy's default percentile (linear interpolation between the closest ranks) of sorted values.
public func percentile(sorted xs: [Double], _ q: Double) -> Double {
    precondition(!xs.isEmpty, "percentile of no values")
    let pos = q / 100 * Double(xs.count - 1)
    let lo = Int(pos.rounded(.down)), hi = min(lo + 1, xs.count - 1)
    return xs[lo] + (pos - Double(lo)) * (xs[hi] - xs[lo])
}

/// The paired bootstrap of deltas over validation images: every resample (`counts(r)`, how often
/// each image is drawn) weighs the same images for both backbones and every seed; its delta is the
/// mean of A's seeds minus the mean of B's, the interval the percentiles of those deltas. Each
/// statistic is computed once per resample for all `metrics` (a detection statistic is a COCO eval).
/// - Parameters:
///   - a, b: each seed's statistic of backbone A and backbone B, all over the same images.
/// - Returns: the interval of each metric.
/// - Throws: `TaskError` when the runs were not scored on the same images in the same order, or a
///   metric is undefined on every resample.
public func pairedBootstrap(a: [PerImageStatistic], b: [PerImageStatistic], metrics: [String], resamples: Int,
                            confidence: Double = 0.95, counts: (Int) -> [Int]) throws -> [String: DeltaInterval] {
    guard let first = a.first, !b.isEmpty else { throw TaskError.badArgument("a paired bootstrap needs runs of both backbones") }
    guard (a + b).allSatisfy({ $0.images == first.images }) else {
        throw TaskError.badArgument("the runs compared were scored on different validation images, so they cannot be paired")
    }
    func deltas(_ w: [Int]) -> [Double] {
        let va = a.map { $0.values(counts: w) }, vb = b.map { $0.values(counts: w) }
        return metrics.map { m in
            va.map { $0[m] ?? .nan }.reduce(0, +) / Double(a.count) - vb.map { $0[m] ?? .nan }.reduce(0, +) / Double(b.count)
        }
    }
    let observed = deltas([Int](repeating: 1, count: first.images.count))
    let drawn = (0..<resamples).map { deltas(counts($0)) }
    let tail = (1 - confidence) / 2 * 100
    var intervals: [String: DeltaInterval] = [:]
    for (k, metric) in metrics.enumerated() {
        let sorted = drawn.map { $0[k] }.filter { !$0.isNaN }.sorted()
        guard !sorted.isEmpty else { throw TaskError.badArgument("\(metric) is undefined on every bootstrap resample") }
        intervals[metric] = DeltaInterval(delta: observed[k], low: percentile(sorted: sorted, tail), high: percentile(sorted: sorted, 100 - tail))
    }
    return intervals
}

/// The paired bootstrap of one metric's delta (see `pairedBootstrap(a:b:metrics:...)`).
public func pairedBootstrap(a: [PerImageStatistic], b: [PerImageStatistic], metric: String, resamples: Int,
                            confidence: Double = 0.95, counts: (Int) -> [Int]) throws -> DeltaInterval {
    try pairedBootstrap(a: a, b: b, metrics: [metric], resamples: resamples, confidence: confidence, counts: counts)[metric]!
}

/// `pairedBootstrap` with the resamples of `settings` (`bootstrapCounts`): `detectionResamples` for
/// detection statistics, `resamples` for the others.
public func pairedBootstrap(a: [PerImageStatistic], b: [PerImageStatistic], metrics: [String],
                            settings: BootstrapSettings) throws -> [String: DeltaInterval] {
    let n = a.first?.images.count ?? 0
    return try pairedBootstrap(a: a, b: b, metrics: metrics, resamples: settings.resamples(for: a.first), confidence: settings.confidence) {
        bootstrapCounts(images: n, resample: $0, seed: settings.seed)
    }
}

/// `pairedBootstrap` of one metric with the resamples of `settings`.
public func pairedBootstrap(a: [PerImageStatistic], b: [PerImageStatistic], metric: String,
                            settings: BootstrapSettings) throws -> DeltaInterval {
    try pairedBootstrap(a: a, b: b, metrics: [metric], settings: settings)[metric]!
}

extension BootstrapSettings {
    /// The resamples drawn for runs of `statistic`'s kind.
    public func resamples(for statistic: PerImageStatistic?) -> Int {
        statistic is DetectionStatistic ? detectionResamples : resamples
    }
}
