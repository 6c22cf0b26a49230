/// Cross-entropy against target distributions (hard labels, label smoothing and mixup all become
/// targets): probs (R,K) = softmax(logits (R,K)); returns mean over rows of -sum_k t_k log p_k.
public func crossEntropyForward(probs: UnsafeMutablePointer<Float>, logits: UnsafePointer<Float>,
                                targets: UnsafePointer<Float>, rows: Int, classes: Int) -> Float {
    softmaxForward(out: probs, input: logits, rows: rows, width: classes)
    var total: Double = 0
    for r in 0..<rows {
        let l = logits + r * classes, t = targets + r * classes
        var mx = -Float.infinity
        for k in 0..<classes { mx = max(mx, l[k]) }
        var s: Double = 0
        for k in 0..<classes { s += Double(expf(l[k] - mx)) }
        let logZ = Double(mx) + s.logValue
        for k in 0..<classes where t[k] != 0 { total -= Double(t[k]) * (Double(l[k]) - logZ) }
    }
    return Float(total / Double(rows))
}

/// Accumulates: dLogits (R,K) += scale * (probs - targets) / R; scale is the loss's upstream gradient.
public func crossEntropyBackward(dLogits: UnsafeMutablePointer<Float>, probs: UnsafePointer<Float>,
                                 targets: UnsafePointer<Float>, rows: Int, classes: Int, scale: Float = 1) {
    let s = scale / Float(rows)
    for i in 0..<(rows * classes) { dLogits[i] += s * (probs[i] - targets[i]) }
}

/// Target distributions for hard labels with label smoothing eps: (1 - eps) one-hot + eps / K,
/// as PyTorch's CrossEntropyLoss(label_smoothing:) and timm's LabelSmoothingCrossEntropy.
public func smoothedTargets(labels: [Int], classes: Int, smoothing: Float) -> [Float] {
    var t = [Float](repeating: smoothing / Float(classes), count: labels.count * classes)
    for (r, y) in labels.enumerated() { t[r * classes + y] += 1 - smoothing }
    return t
}

import Foundation

extension Double {
    @inline(__always) var logValue: Double { Foundation.log(self) }
}
