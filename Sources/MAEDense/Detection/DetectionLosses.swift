import Foundation

// The loss terms detectron2's detection heads sum (with reduction="sum"; callers divide by their
// normaliser), each with its gradient.

/// `F.binary_cross_entropy_with_logits(x, y, reduction="sum")` over `indices` of `logits` with
/// targets `targets` (0 or 1, one per index), in torch's stable form max(x, 0) - x y + log(1 + e^-|x|).
/// When `dLogits` is given, adds (sigmoid(x) - y) * `gradientScale` at each index.
public func binaryCrossEntropyWithLogitsSum(logits: UnsafePointer<Float>, indices: [Int], targets: [Float],
                                            dLogits: UnsafeMutablePointer<Float>? = nil, gradientScale: Float = 1) -> Double {
    precondition(indices.count == targets.count, "\(indices.count) logits but \(targets.count) targets")
    var sum = 0.0
    for (i, y) in zip(indices, targets) {
        let x = logits[i]
        sum += Double(max(x, 0) - x * y + log1pf(expf(-abs(x))))
        if let dLogits { dLogits[i] += (1 / (1 + expf(-x)) - y) * gradientScale }
    }
    return sum
}

/// detectron2's smooth_l1 with beta 0, i.e. `F.l1_loss(p, t, reduction="sum")`, over the values of
/// `predictions` at `indices` against `targets` (one per index). When `dPredictions` is given, adds
/// sign(p - t) * `gradientScale` at each index (0 where p == t, as torch's abs).
public func l1LossSum(predictions: UnsafePointer<Float>, indices: [Int], targets: [Float],
                      dPredictions: UnsafeMutablePointer<Float>? = nil, gradientScale: Float = 1) -> Double {
    precondition(indices.count == targets.count, "\(indices.count) predictions but \(targets.count) targets")
    var sum = 0.0
    for (i, t) in zip(indices, targets) {
        let d = predictions[i] - t
        sum += Double(abs(d))
        if let dPredictions, d != 0 { dPredictions[i] += (d > 0 ? 1 : -1) * gradientScale }
    }
    return sum
}
