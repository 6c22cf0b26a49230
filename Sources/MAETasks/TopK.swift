import MAEDistributed

/// How many classes other than `label` score at least as high as it (0: a top-1 hit), or nil when
/// the label's own score is not finite. A NaN score of another class is not known to be lower than
/// the label's, so it counts as at least as high.
/// - Parameter scores: one sample's class scores [K] (logits, probabilities or kNN votes).
public func labelRank<Scores: RandomAccessCollection>(_ scores: Scores, label: Int) -> Int?
where Scores.Element: FloatingPoint, Scores.Index == Int {
    precondition((0..<scores.count).contains(label), "label \(label) outside 0..<\(scores.count)")
    let y = scores[scores.startIndex + label]
    guard y.isFinite else { return nil }
    var rank = 0
    for c in scores.indices where c != scores.startIndex + label {
        if !(scores[c] < y) { rank += 1 }   // >= y, or NaN
    }
    return rank
}

/// Whether one sample is a top-k hit. A sample is a top-k hit only when its label's score is finite
/// and fewer than k classes score >= it (excluding the label itself): ties count against the sample,
/// a non-finite label score is never a hit (and a NaN elsewhere counts as scoring >= it), so an
/// all-equal head scores 0%, not 100%. With k at or above the number of classes every sample with a
/// finite label score is a hit.
public func isTopKHit<Scores: RandomAccessCollection>(_ scores: Scores, label: Int, k: Int) -> Bool
where Scores.Element: FloatingPoint, Scores.Index == Int {
    labelRank(scores, label: label).map { $0 < k } ?? false
}

/// Top-1 and top-5 counts over a set of samples, by the rule of `isTopKHit`: the one top-k routine
/// every classification task (linear probes, fine-tuning, kNN) scores with.
public struct TopKTally: Sendable {
    public private(set) var top1 = 0
    public private(set) var top5 = 0
    public private(set) var samples = 0
    /// Whether each sample, in the order added, was a top-1 hit (the per-image results the paired
    /// bootstrap of the transfer report resamples).
    public private(set) var top1Hits: [Bool] = []

    public init() {}

    /// Counts one sample from its class scores [K].
    public mutating func add<Scores: RandomAccessCollection>(_ scores: Scores, label: Int)
    where Scores.Element: FloatingPoint, Scores.Index == Int {
        samples += 1
        guard let rank = labelRank(scores, label: label) else { top1Hits.append(false); return }
        top1Hits.append(rank < 1)
        if rank < 1 { top1 += 1 }
        if rank < 5 { top5 += 1 }
    }

    /// Sums the counts over the ranks of `world` (sharded evaluation); one process keeps its own.
    public mutating func sum(over world: World) throws {
        var counts = [Double(top1), Double(top5), Double(samples)]
        try world.allReduceSum(&counts, "the accuracy all-reduce")
        top1 = Int(counts[0]); top5 = Int(counts[1]); samples = Int(counts[2])
    }

    /// Puts every rank's per-image hits in one-process order on every rank, when rank r scored the
    /// batches r, r + size, ... of sizes `batchSizes` (the whole evaluation's, in order). Call it
    /// before `sum(over:)`; one process keeps its own hits.
    public mutating func gatherHits(over world: World, batchSizes: [Int]) throws {
        guard world.size > 1 else { return }
        let parts = try world.allGather(top1Hits.map { $0 ? 1 : 0 }, "the per-image results' all-gather")
        var cursors = [Int](repeating: 0, count: parts.count), hits: [Bool] = []
        for (b, n) in batchSizes.enumerated() {
            let r = b % world.size
            guard cursors[r] + n <= parts[r].count else {
                throw TaskError.badArgument("internal check failed: rank \(r) sent \(parts[r].count) per-image results, fewer than its batches hold")
            }
            hits += parts[r][cursors[r]..<(cursors[r] + n)].map { $0 == 1 }
            cursors[r] += n
        }
        top1Hits = hits
    }

    /// Top-1 and top-5 in percent (0 for no samples).
    public var percent: (top1: Double, top5: Double) {
        let n = Double(max(samples, 1))
        return (100 * Double(top1) / n, 100 * Double(top5) / n)
    }
}

extension HeadScore {
    /// The tally's accuracies with a mean loss.
    init(_ tally: TopKTally, loss: Double = 0) {
        let p = tally.percent
        self.init(top1: p.top1, top5: p.top5, loss: loss, top1Hits: tally.top1Hits)
    }
}
