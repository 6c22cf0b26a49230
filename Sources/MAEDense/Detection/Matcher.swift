// detectron2 `Matcher`: assigns each prediction (anchor or proposal) to its best ground truth and
// labels it by IoU bands.

/// detectron2's `Matcher(thresholds, labels, allow_low_quality_matches)`. With thresholds
/// [t1, ..., tk] and labels [l0, ..., lk], a prediction whose best IoU lies in [t(i), t(i+1))
/// (t0 = -inf, t(k+1) = +inf) gets label l(i). The RPN's: [0.3, 0.7], [0, -1, 1], low-quality
/// matches on; the RoI heads': [0.5], [0, 1], off.
public struct Matcher: Equatable, Sendable {
    public let thresholds: [Float]
    public let labels: [Int8]
    public let allowLowQualityMatches: Bool

    public init(thresholds: [Float], labels: [Int8], allowLowQualityMatches: Bool) {
        precondition(zip(thresholds, thresholds.dropFirst()).allSatisfy { $0 <= $1 }, "matcher thresholds \(thresholds) must ascend")
        precondition(labels.count == thresholds.count + 1, "\(labels.count) matcher labels for \(thresholds.count) thresholds")
        precondition(labels.allSatisfy { [-1, 0, 1].contains($0) }, "matcher labels \(labels) must be -1, 0 or 1")
        self.thresholds = thresholds
        self.labels = labels
        self.allowLowQualityMatches = allowLowQualityMatches
    }

    /// The RPN's anchor matcher: background below 0.3, ignored in [0.3, 0.7), foreground from 0.7, low-quality matches kept.
    public static let rpn = Matcher(thresholds: [0.3, 0.7], labels: [0, -1, 1], allowLowQualityMatches: true)
    /// The RoI heads' proposal matcher: foreground from IoU 0.5.
    public static let roiHeads = Matcher(thresholds: [0.5], labels: [0, 1], allowLowQualityMatches: false)

    /// Matches `predictions` predictions against `groundTruths` ground truths given their IoUs
    /// `quality` ((M gt, N predictions) row-major, every value >= 0). Returns for each prediction its
    /// best ground truth (the first of equal maxima, as torch's CPU `max(dim=0)`) and its label.
    /// No ground truth: every prediction matches 0 with label `labels[0]` (background).
    /// Low-quality matches (Faster R-CNN's rule (i)): for each ground truth, every prediction whose
    /// IoU equals that ground truth's best, ties included, is labelled 1 while keeping its own best
    /// match. As in detectron2, a ground truth that overlaps nothing has best IoU 0, so then every
    /// prediction at IoU 0 with it is labelled 1 too.
    public func callAsFunction(quality: [Float], groundTruths m: Int, predictions n: Int) -> (matches: [Int], labels: [Int8]) {
        precondition(quality.count == m * n, "\(quality.count) IoUs for \(m) x \(n)")
        if m == 0 || n == 0 {
            return ([Int](repeating: 0, count: n), [Int8](repeating: labels[0], count: n))
        }
        precondition(quality.allSatisfy { $0 >= 0 }, "match quality must be >= 0")
        var matches = [Int](repeating: 0, count: n), best = [Float](repeating: 0, count: n)
        for j in 0..<n {
            var v = quality[j], at = 0
            for i in 1..<m where quality[i * n + j] > v { v = quality[i * n + j]; at = i }
            matches[j] = at
            best[j] = v
        }
        var out = [Int8](repeating: 1, count: n)
        let bounds = [-Float.infinity] + thresholds + [Float.infinity]
        for j in 0..<n {
            for (k, label) in labels.enumerated() where best[j] >= bounds[k] && best[j] < bounds[k + 1] {
                out[j] = label
            }
        }
        if allowLowQualityMatches {
            for i in 0..<m {
                let row = quality[(i * n)..<((i + 1) * n)]
                let highest = row.max()!
                for j in 0..<n where quality[i * n + j] == highest { out[j] = 1 }
            }
        }
        return (matches, out)
    }
}
