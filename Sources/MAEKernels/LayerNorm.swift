/// Layer normalisation over the last dimension (biased variance, as PyTorch).
/// out (R,W), mean (R), rstd (R), input (R,W), weight (W), bias (W). MAE uses eps 1e-6.
public func layerNormForward(out: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                             rstd: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                             weight: UnsafePointer<Float>, bias: UnsafePointer<Float>,
                             rows: Int, width: Int, eps: Float = 1e-6) {
    Profiler.measure(.layerNorm) {
        Parallel.forRanges(rows, grain: 16) { range in
            for r in range {
                let x = input + r * width, y = out + r * width
                let m = rowSum(x, width) / Float(width)
                var v: Float = 0
                var i = 0
                var acc = Vec16()
                let mv = Vec16(repeating: m)
                while i + 16 <= width { let d = load16(x + i) - mv; acc = fma16(d, d, acc); i += 16 }
                v = acc.sum()
                while i < width { let d = x[i] - m; v += d * d; i += 1 }
                let s = 1 / (v / Float(width) + eps).squareRoot()
                mean[r] = m
                rstd[r] = s
                let sv = Vec16(repeating: s)
                i = 0
                while i + 16 <= width {
                    let n = (load16(x + i) - mv) * sv
                    store16(fma16(n, load16(weight + i), load16(bias + i)), y + i)
                    i += 16
                }
                while i < width { y[i] = (x[i] - m) * s * weight[i] + bias[i]; i += 1 }
            }
        }
    }
}

/// Accumulates: dInput (R,W) += dL/dinput; dWeight (W) += sum dOut * xhat; dBias (W) += sum dOut.
/// dOut (R,W), input (R,W), mean (R), rstd (R) as saved by the forward.
public func layerNormBackward(dInput: UnsafeMutablePointer<Float>, dWeight: UnsafeMutablePointer<Float>?,
                              dBias: UnsafeMutablePointer<Float>?,
                              dOut: UnsafePointer<Float>, input: UnsafePointer<Float>,
                              weight: UnsafePointer<Float>, mean: UnsafePointer<Float>,
                              rstd: UnsafePointer<Float>, rows: Int, width: Int) {
    Profiler.measure(.layerNorm) {
        let chunks = Parallel.chunkCount(rows, grain: 16)
        // One partial (dWeight, dBias) per chunk, summed in chunk order afterwards.
        let partial = UnsafeMutablePointer<Float>.allocate(capacity: chunks * 2 * width)
        partial.initialize(repeating: 0, count: chunks * 2 * width)
        defer { partial.deallocate() }
        Parallel.forChunks(rows, grain: 16) { chunk, range in
            let pw = partial + chunk * 2 * width, pb = pw + width
            for r in range {
                let x = input + r * width, dy = dOut + r * width, dx = dInput + r * width
                let m = mean[r], s = rstd[r]
                let mv = Vec16(repeating: m), sv = Vec16(repeating: s)
                var sumD = Vec16(), sumDN = Vec16()
                var i = 0
                while i + 16 <= width {
                    let n = (load16(x + i) - mv) * sv, g = load16(dy + i)
                    let d = g * load16(weight + i)
                    sumD += d
                    sumDN = fma16(d, n, sumDN)
                    store16(fma16(g, n, load16(pw + i)), pw + i)
                    store16(load16(pb + i) + g, pb + i)
                    i += 16
                }
                var sD = sumD.sum(), sDN = sumDN.sum()
                while i < width {
                    let n = (x[i] - m) * s, d = dy[i] * weight[i]
                    sD += d; sDN += d * n; pw[i] += dy[i] * n; pb[i] += dy[i]
                    i += 1
                }
                let meanD = Vec16(repeating: sD / Float(width)), meanDN = Vec16(repeating: sDN / Float(width))
                i = 0
                while i + 16 <= width {
                    let n = (load16(x + i) - mv) * sv
                    let d = load16(dy + i) * load16(weight + i)
                    store16(fma16(sv, d - meanD - n * meanDN, load16(dx + i)), dx + i)
                    i += 16
                }
                while i < width {
                    let n = (x[i] - m) * s
                    dx[i] += s * (dy[i] * weight[i] - meanD[0] - n * meanDN[0])
                    i += 1
                }
            }
        }
        for c in 0..<chunks {
            let pw = partial + c * 2 * width, pb = pw + width
            if let dWeight { for i in 0..<width { dWeight[i] += pw[i] } }
            if let dBias { for i in 0..<width { dBias[i] += pb[i] } }
        }
    }
}

@inline(__always) @usableFromInline
func rowSum(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec16()
    var i = 0
    while i + 16 <= n { acc += load16(x + i); i += 16 }
    var s = acc.sum()
    while i < n { s += x[i]; i += 1 }
    return s
}
