import MAEKernels

// detectron2 `subsample_labels`: a balanced sample of positives and negatives.

/// detectron2's `subsample_labels(labels, num_samples, positive_fraction, bg_label)`: positives are
/// labels other than -1 and `backgroundLabel`, negatives are `backgroundLabel`. It keeps
/// min(#positives, Int(numSamples * positiveFraction)) positives and fills up to `numSamples`
/// with negatives (as many as exist). Returns the chosen indices into `labels`, positives then
/// negatives, each in the order drawn.
///
/// The draws differ from torch's `randperm`: each set is shuffled by `RandomStream.shuffle`
/// (positives first, then negatives, from the one stream) and its first k taken. So counts and
/// membership match detectron2 exactly but not which elements are picked; fixtures compare those parts.
public func subsampleLabels(_ labels: [Int], numSamples: Int, positiveFraction: Double, backgroundLabel: Int,
                            stream: inout RandomStream) -> (positive: [Int], negative: [Int]) {
    precondition(numSamples >= 0 && positiveFraction >= 0 && positiveFraction <= 1,
                 "subsample of \(numSamples) at positive fraction \(positiveFraction)")
    var positive = labels.indices.filter { labels[$0] != -1 && labels[$0] != backgroundLabel }
    var negative = labels.indices.filter { labels[$0] == backgroundLabel }
    let (numPositive, numNegative) = subsampleSizes((positive.count, negative.count), numSamples: numSamples,
                                                    positiveFraction: positiveFraction)
    stream.shuffle(&positive)
    stream.shuffle(&negative)
    return (Array(positive.prefix(numPositive)), Array(negative.prefix(numNegative)))
}

/// How many positives and negatives `subsampleLabels` keeps of `candidates`.
public func subsampleSizes(_ candidates: (positive: Int, negative: Int), numSamples: Int,
                           positiveFraction: Double) -> (positive: Int, negative: Int) {
    let positive = min(candidates.positive, Int(Double(numSamples) * positiveFraction))
    return (positive, min(candidates.negative, numSamples - positive))
}

/// How many positives and negatives `subsampleLabels` would shuffle for `labels`: its draws depend on these alone.
public func subsampleCandidates(_ labels: [Int], backgroundLabel: Int) -> (positive: Int, negative: Int) {
    var positive = 0, negative = 0
    for label in labels {
        if label == backgroundLabel { negative += 1 } else if label != -1 { positive += 1 }
    }
    return (positive, negative)
}

/// A training batch's place in a global batch under data parallelism: its rows (`shard`) and the
/// ranks holding the others. The samplers draw from one stream image after image, so a rank first
/// replays the draws of the global batch's images before its rows (from their candidate counts,
/// summed over the ranks); loss normalisers that count samples count the whole batch's.
public struct GlobalBatch {
    public var shard: BatchShard
    public var ranks: RankSum

    public init(shard: BatchShard, ranks: RankSum) {
        self.shard = shard; self.ranks = ranks
    }

    /// Every image's candidate counts in the global batch (`total` entries), from this rank's
    /// images' (`shard.count` entries): one sum over the ranks of 2 x total values.
    public func candidates(_ mine: [(positive: Int, negative: Int)]) -> [(positive: Int, negative: Int)] {
        precondition(mine.count == shard.count, "\(mine.count) images' counts for a shard of \(shard.count)")
        var values = [Double](repeating: 0, count: 2 * shard.total)
        for (k, c) in mine.enumerated() {
            values[2 * (shard.offset + k)] = Double(c.positive)
            values[2 * (shard.offset + k) + 1] = Double(c.negative)
        }
        ranks.sumOverRanks(&values)
        return (0..<shard.total).map { (Int(values[2 * $0]), Int(values[2 * $0 + 1])) }
    }

    /// Advances `stream` past the `subsampleLabels` draws of the global batch's images before this
    /// rank's rows (shuffles of as many positives, then negatives, as each had).
    public func skipEarlierImages(_ all: [(positive: Int, negative: Int)], stream: inout RandomStream) {
        for c in all.prefix(shard.offset) {
            var positive = Array(0..<c.positive), negative = Array(0..<c.negative)
            stream.shuffle(&positive)
            stream.shuffle(&negative)
        }
    }
}
