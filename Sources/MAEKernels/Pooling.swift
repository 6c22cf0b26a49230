// 2-D pooling over NCHW float32 planes, with torch's window arithmetic (floor mode, no dilation):
// max pool (indices kept for backward), average pool, adaptive average pool. Every plane (b, c) is
// independent, so all of these split over planes and no two workers write the same element.

/// Sizes of a pooling window: input (B,C,H,W) -> output (B,C,OH,OW) with
/// OH = (H + 2 padH - kernelH) / strideH + 1 (floor), and likewise OW.
public struct Pool2dSize: Equatable {
    public var batch, channels, height, width: Int
    public var kernelH, kernelW, strideH, strideW, padH, padW: Int

    /// Pairs are (height, width). `stride` defaults to the kernel, as in torch.
    public init(batch: Int, channels: Int, height: Int, width: Int,
                kernel: (Int, Int), stride: (Int, Int)? = nil, padding: (Int, Int) = (0, 0)) {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        (kernelH, kernelW) = kernel; (strideH, strideW) = stride ?? kernel; (padH, padW) = padding
        precondition(kernelH > 0 && kernelW > 0 && strideH > 0 && strideW > 0, "bad pooling geometry \(self)")
        // torch's rule: a window must always overlap the input.
        precondition(padH >= 0 && padW >= 0 && 2 * padH <= kernelH && 2 * padW <= kernelW,
                     "pooling padding must be at most half the kernel: \(self)")
        precondition(outHeight > 0 && outWidth > 0, "pooling output would be empty: \(self)")
    }

    public var outHeight: Int { (height + 2 * padH - kernelH) / strideH + 1 }
    public var outWidth: Int { (width + 2 * padW - kernelW) / strideW + 1 }
    var planes: Int { batch * channels }
}

/// Sizes of a resampling of every plane: input (B,C,H,W) -> output (B,C,OH,OW). Used by adaptive
/// average pooling and by interpolation (Resize.swift).
public struct Resample2dSize: Equatable {
    public var batch, channels, height, width, outHeight, outWidth: Int

    public init(batch: Int, channels: Int, height: Int, width: Int, outHeight: Int, outWidth: Int) {
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        self.outHeight = outHeight; self.outWidth = outWidth
        precondition(height > 0 && width > 0 && outHeight > 0 && outWidth > 0, "empty resampling \(self)")
    }

    var planes: Int { batch * channels }
}

// MARK: - Max pool

/// out (B,C,OH,OW), indices (B,C,OH,OW), input (B,C,H,W). Writes `out` and `indices`.
/// As torch: padding reads as -inf, so a padded position never wins; `indices` holds the winner's
/// flat index h * W + w within its input plane; the first maximum wins ties and NaN propagates.
public func maxPool2dForward(out: UnsafeMutablePointer<Float>, indices: UnsafeMutablePointer<Int32>,
                             input: UnsafePointer<Float>, size s: Pool2dSize) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth
    Parallel.forRanges(s.planes) { planes in
        for p in planes {
            let x = input + p * inPlane, y = out + p * outPlane, idx = indices + p * outPlane
            for oh in 0..<s.outHeight {
                let h0 = oh * s.strideH - s.padH, h1 = min(h0 + s.kernelH, s.height)
                for ow in 0..<s.outWidth {
                    let w0 = ow * s.strideW - s.padW, w1 = min(w0 + s.kernelW, s.width)
                    var best = -Float.infinity, bestAt = max(h0, 0) * s.width + max(w0, 0)
                    for h in max(h0, 0)..<h1 {
                        for w in max(w0, 0)..<w1 {
                            let v = x[h * s.width + w]
                            if v > best || v.isNaN { best = v; bestAt = h * s.width + w }
                        }
                    }
                    y[oh * s.outWidth + ow] = best
                    idx[oh * s.outWidth + ow] = Int32(bestAt)
                }
            }
        }
    }
}

/// dInput (B,C,H,W), dOut (B,C,OH,OW), indices (B,C,OH,OW) from the forward. Accumulates into dInput.
public func maxPool2dBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                              indices: UnsafePointer<Int32>, size s: Pool2dSize) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth
    Parallel.forRanges(s.planes) { planes in
        for p in planes {
            let dx = dInput + p * inPlane, g = dOut + p * outPlane, idx = indices + p * outPlane
            for i in 0..<outPlane { dx[Int(idx[i])] += g[i] }
        }
    }
}

// MARK: - Average pool

/// The input rows (or columns) a window covers and the divisor it uses, as torch's avg_pool2d:
/// the divisor counts padded positions (count_include_pad) but never the part of a window that
/// hangs past the padding.
@inline(__always)
private func avgWindow(_ o: Int, stride: Int, pad: Int, kernel: Int, size: Int) -> (Range<Int>, span: Int) {
    let start = o * stride - pad, end = min(start + kernel, size + pad)
    let lo = max(start, 0), hi = min(end, size)
    return (lo..<max(lo, hi), end - start)
}

/// out (B,C,OH,OW), input (B,C,H,W). Writes `out`. `countIncludePad` as torch (default true:
/// padded zeros count in the mean).
public func avgPool2dForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                             size s: Pool2dSize, countIncludePad: Bool = true) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth
    Parallel.forRanges(s.planes) { planes in
        for p in planes {
            let x = input + p * inPlane, y = out + p * outPlane
            for oh in 0..<s.outHeight {
                let (hs, hSpan) = avgWindow(oh, stride: s.strideH, pad: s.padH, kernel: s.kernelH, size: s.height)
                for ow in 0..<s.outWidth {
                    let (ws, wSpan) = avgWindow(ow, stride: s.strideW, pad: s.padW, kernel: s.kernelW, size: s.width)
                    var sum: Float = 0
                    for h in hs { for w in ws { sum += x[h * s.width + w] } }
                    let divisor = countIncludePad ? hSpan * wSpan : hs.count * ws.count
                    y[oh * s.outWidth + ow] = divisor > 0 ? sum / Float(divisor) : 0
                }
            }
        }
    }
}

/// dInput (B,C,H,W), dOut (B,C,OH,OW). Accumulates into dInput.
public func avgPool2dBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                              size s: Pool2dSize, countIncludePad: Bool = true) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth
    Parallel.forRanges(s.planes) { planes in
        for p in planes {
            let dx = dInput + p * inPlane, g = dOut + p * outPlane
            for oh in 0..<s.outHeight {
                let (hs, hSpan) = avgWindow(oh, stride: s.strideH, pad: s.padH, kernel: s.kernelH, size: s.height)
                for ow in 0..<s.outWidth {
                    let (ws, wSpan) = avgWindow(ow, stride: s.strideW, pad: s.padW, kernel: s.kernelW, size: s.width)
                    let divisor = countIncludePad ? hSpan * wSpan : hs.count * ws.count
                    guard divisor > 0 else { continue }
                    let share = g[oh * s.outWidth + ow] / Float(divisor)
                    for h in hs { for w in ws { dx[h * s.width + w] += share } }
                }
            }
        }
    }
}

// MARK: - Adaptive average pool

/// The input rows torch's adaptive pooling averages for output row `o`:
/// floor(o * size / outSize) ..< ceil((o + 1) * size / outSize). Windows may overlap.
@inline(__always)
private func adaptiveWindow(_ o: Int, size: Int, outSize: Int) -> Range<Int> {
    (o * size / outSize)..<(((o + 1) * size + outSize - 1) / outSize)
}

/// out (B,C,OH,OW), input (B,C,H,W). Writes `out`.
public func adaptiveAvgPool2dForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                                     size s: Resample2dSize) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth
    Parallel.forRanges(s.planes) { planes in
        for p in planes {
            let x = input + p * inPlane, y = out + p * outPlane
            for oh in 0..<s.outHeight {
                let hs = adaptiveWindow(oh, size: s.height, outSize: s.outHeight)
                for ow in 0..<s.outWidth {
                    let ws = adaptiveWindow(ow, size: s.width, outSize: s.outWidth)
                    var sum: Float = 0
                    for h in hs { for w in ws { sum += x[h * s.width + w] } }
                    y[oh * s.outWidth + ow] = sum / Float(hs.count * ws.count)
                }
            }
        }
    }
}

/// dInput (B,C,H,W), dOut (B,C,OH,OW). Accumulates into dInput.
public func adaptiveAvgPool2dBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                      size s: Resample2dSize) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth
    Parallel.forRanges(s.planes) { planes in
        for p in planes {
            let dx = dInput + p * inPlane, g = dOut + p * outPlane
            for oh in 0..<s.outHeight {
                let hs = adaptiveWindow(oh, size: s.height, outSize: s.outHeight)
                for ow in 0..<s.outWidth {
                    let ws = adaptiveWindow(ow, size: s.width, outSize: s.outWidth)
                    let share = g[oh * s.outWidth + ow] / Float(hs.count * ws.count)
                    for h in hs { for w in ws { dx[h * s.width + w] += share } }
                }
            }
        }
    }
}
