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
    let numPositive = min(positive.count, Int(Double(numSamples) * positiveFraction))
    let numNegative = min(negative.count, numSamples - numPositive)
    stream.shuffle(&positive)
    stream.shuffle(&negative)
    return (Array(positive.prefix(numPositive)), Array(negative.prefix(numNegative)))
}
