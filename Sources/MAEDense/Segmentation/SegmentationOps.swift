import Foundation
import MAEKernels

// The small map operations the segmentation heads compose, each with its backward: bilinear resize
// (align_corners false, mmseg's `resize`), channel concatenation, Dropout2d, per-pixel cross-entropy.
// Maps are (B, C, H, W).

/// Bilinear resize of x (B, C, H, W) to (B, C, OH, OW), align_corners false; x itself when the size is the same.
public func resizeBilinear(_ x: Tensor, height oh: Int, width ow: Int) -> Tensor {
    let s = x.shape
    if s[2] == oh && s[3] == ow { return x }
    let out = Tensor([s[0], s[1], oh, ow])
    resizeBilinearForward(out: out.data, input: x.data,
                          size: Resample2dSize(batch: s[0], channels: s[1], height: s[2], width: s[3], outHeight: oh, outWidth: ow),
                          alignCorners: false)
    return out
}

/// Backward of `resizeBilinear`: accumulates the gradient of the (B, C, OH, OW) output into dx (B, C, H, W).
public func resizeBilinearBackward(_ dOut: Tensor, into dx: Tensor) {
    let s = dx.shape
    if s == dOut.shape {
        addInPlace(dx, dOut)
        return
    }
    resizeBilinearBackward(dInput: dx.data, dOut: dOut.data,
                           size: Resample2dSize(batch: s[0], channels: s[1], height: s[2], width: s[3],
                                                outHeight: dOut.shape[2], outWidth: dOut.shape[3]),
                           alignCorners: false)
}

/// a += b, same shapes.
public func addInPlace(_ a: Tensor, _ b: Tensor) {
    precondition(a.count == b.count, "adding \(b.shape) to \(a.shape)")
    for i in 0..<a.count { a.data[i] += b.data[i] }
}

/// torch.cat(maps, dim=1): (B, C1 + C2 + ..., H, W).
public func concatChannels(_ maps: [Tensor]) -> Tensor {
    let b = maps[0].shape[0], h = maps[0].shape[2], w = maps[0].shape[3], plane = h * w
    precondition(maps.allSatisfy { $0.shape[0] == b && $0.shape[2] == h && $0.shape[3] == w }, "concatenating unequal maps")
    let total = maps.reduce(0) { $0 + $1.shape[1] }
    let out = Tensor([b, total, h, w])
    for bi in 0..<b {
        var at = 0
        for m in maps {
            let c = m.shape[1]
            (out.data + (bi * total + at) * plane).update(from: m.data + bi * c * plane, count: c * plane)
            at += c
        }
    }
    return out
}

/// Backward of `concatChannels`: the gradient of each input, in order.
public func splitChannels(_ d: Tensor, _ channels: [Int]) -> [Tensor] {
    let b = d.shape[0], h = d.shape[2], w = d.shape[3], plane = h * w, total = d.shape[1]
    precondition(channels.reduce(0, +) == total, "splitting \(total) channels as \(channels)")
    var at = 0
    return channels.map { c in
        let out = Tensor([b, c, h, w])
        for bi in 0..<b { (out.data + bi * c * plane).update(from: d.data + (bi * total + at) * plane, count: c * plane) }
        at += c
        return out
    }
}

/// nn.Dropout2d in training: each (image, channel) plane zeroed with probability `p`, the rest scaled
/// by 1 / (1 - p). Returns the output and the per-plane scale (0 or 1 / (1 - p)) for the backward.
/// With `shard`, x holds those rows of a global batch: the draws are made for the whole batch and
/// the shard's rows kept, as one process draws them.
public func dropout2dForward(_ x: Tensor, p: Float, rng: inout RandomStream,
                             shard: BatchShard? = nil) -> (out: Tensor, scale: [Float]) {
    let planes = x.shape[0] * x.shape[1], plane = x.count / max(planes, 1)
    let keep = 1 / (1 - p)
    let rows = shard ?? .whole(x.shape[0])
    precondition(rows.count == x.shape[0], "a shard of \(rows.count) rows for a batch of \(x.shape[0])")
    let scale = rows.rows((0..<(rows.total * x.shape[1])).map { _ in rng.nextFloat() < p ? 0 : keep }, perRow: x.shape[1])
    let out = Tensor(x.shape)
    for k in 0..<planes { for i in 0..<plane { out.data[k * plane + i] = x.data[k * plane + i] * scale[k] } }
    return (out, scale)
}

/// Backward of `dropout2dForward`: dOut scaled plane by plane.
public func dropout2dBackward(_ dOut: Tensor, scale: [Float]) -> Tensor {
    let plane = dOut.count / max(scale.count, 1)
    let dx = Tensor(dOut.shape)
    for k in scale.indices { for i in 0..<plane { dx.data[k * plane + i] = dOut.data[k * plane + i] * scale[k] } }
    return dx
}

/// mmseg's CrossEntropyLoss (use_sigmoid false, avg_non_ignore false): per-pixel softmax cross-entropy
/// of logits (B, K, H, W) against labels (B, H, W), pixels labelled `ignoreIndex` contributing 0, the
/// sum divided by ALL B*H*W pixels (mmseg's default mean), times `weight`. Returns the loss and its
/// gradient with respect to the logits.
public func pixelCrossEntropy(_ logits: Tensor, labels: [Int32], ignoreIndex: Int32 = 255,
                              weight: Float = 1) -> (loss: Float, dLogits: Tensor) {
    let b = logits.shape[0], k = logits.shape[1], plane = logits.shape[2] * logits.shape[3]
    precondition(labels.count == b * plane, "\(labels.count) labels for \(b)x\(plane) pixels")
    let d = Tensor(logits.shape)
    let scale = weight / Float(b * plane)
    var total: Double = 0
    var row = [Float](repeating: 0, count: k)
    for bi in 0..<b {
        let base = bi * k * plane
        for p in 0..<plane {
            let label = labels[bi * plane + p]
            if label == ignoreIndex { continue }
            precondition(label >= 0 && Int(label) < k, "label \(label) outside 0..<\(k) (and not \(ignoreIndex))")
            var mx = -Float.infinity
            for c in 0..<k { row[c] = logits.data[base + c * plane + p]; mx = max(mx, row[c]) }
            var sum: Float = 0
            for c in 0..<k { row[c] = expf(row[c] - mx); sum += row[c] }
            total += Double(logf(sum) + mx - logits.data[base + Int(label) * plane + p])
            for c in 0..<k { d.data[base + c * plane + p] = row[c] / sum * scale }
            d.data[base + Int(label) * plane + p] -= scale
        }
    }
    return (Float(total) * scale, d)
}

/// The class of each pixel: argmax over K of logits (B, K, H, W) -> (B, H, W) (first maximum, as torch).
public func argmaxClasses(_ logits: Tensor) -> [Int32] {
    let b = logits.shape[0], k = logits.shape[1], plane = logits.shape[2] * logits.shape[3]
    var out = [Int32](repeating: 0, count: b * plane)
    for bi in 0..<b {
        for p in 0..<plane {
            var best = 0, value = logits.data[bi * k * plane + p]
            for c in 1..<max(k, 1) where logits.data[(bi * k + c) * plane + p] > value {
                best = c; value = logits.data[(bi * k + c) * plane + p]
            }
            out[bi * plane + p] = Int32(best)
        }
    }
    return out
}
