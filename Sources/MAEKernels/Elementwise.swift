/// out (n) = a (n) + b (n); `out` may alias either input (residual connections).
public func addForward(out: UnsafeMutablePointer<Float>, _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>,
                       count: Int) {
    Parallel.forRanges(count, grain: 1 << 15) { r in
        var i = r.lowerBound
        while i + 16 <= r.upperBound { store16(load16(a + i) + load16(b + i), out + i); i += 16 }
        while i < r.upperBound { out[i] = a[i] + b[i]; i += 1 }
    }
}

/// Accumulates: dst (n) += scale * src (n). The backward of an addition, and a general axpy.
public func accumulate(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, count: Int, scale: Float = 1) {
    Parallel.forRanges(count, grain: 1 << 15) { r in
        let s = Vec16(repeating: scale)
        var i = r.lowerBound
        while i + 16 <= r.upperBound { store16(fma16(load16(src + i), s, load16(dst + i)), dst + i); i += 16 }
        while i < r.upperBound { dst[i] += scale * src[i]; i += 1 }
    }
}

/// Scales each of `groups` contiguous groups of `size` values: out (G,S) = input (G,S) * scale (G).
/// Drop path (stochastic depth) is this with scale 0 or 1/keep per sample; its backward is the
/// same call on the gradient. Dropout is this with one group per element.
public func scaleGroupsForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                               scale: UnsafePointer<Float>, groups: Int, size: Int) {
    Parallel.forRanges(groups) { r in
        for g in r {
            let s = scale[g]
            for i in 0..<size { out[g * size + i] = input[g * size + i] * s }
        }
    }
}

/// Per-group keep masks for dropout / drop path: each entry is 0 with probability p, else 1/(1-p).
public func dropMask(_ mask: UnsafeMutablePointer<Float>, count: Int, p: Float, rng: inout RandomStream) {
    let keep = 1 - p
    for i in 0..<count { mask[i] = rng.nextFloat() < p ? 0 : 1 / keep }
}

/// Mean over tokens `from..<N` of each sample: out (B,D) = mean_t input (B,N,D)[:, t, :].
/// MAE's global pool uses from = 1 (patch tokens, cls excluded).
public func meanTokensForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                              batch: Int, tokens: Int, width: Int, from: Int) {
    let inv = 1 / Float(tokens - from)
    Parallel.forRanges(batch) { r in
        for b in r {
            let o = out + b * width
            o.update(repeating: 0, count: width)
            for t in from..<tokens {
                let x = input + (b * tokens + t) * width
                for i in 0..<width { o[i] += x[i] }
            }
            for i in 0..<width { o[i] *= inv }
        }
    }
}

/// Accumulates: dInput (B,N,D)[:, from..., :] += dOut (B,D) / (N - from).
public func meanTokensBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                               batch: Int, tokens: Int, width: Int, from: Int) {
    let inv = 1 / Float(tokens - from)
    Parallel.forRanges(batch) { r in
        for b in r {
            for t in from..<tokens {
                let dx = dInput + (b * tokens + t) * width, d = dOut + b * width
                for i in 0..<width { dx[i] += d[i] * inv }
            }
        }
    }
}

/// out (rows, width) = input * scale[channel]: a per-channel scale (BEiT's layer scale gamma). out may be input.
public func scaleChannelsForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                                 scale: UnsafePointer<Float>, rows: Int, width: Int) {
    Parallel.forChunks(rows, grain: 64) { _, range in
        for r in range {
            let o = out + r * width, x = input + r * width
            for c in 0..<width { o[c] = x[c] * scale[c] }
        }
    }
}

/// The backward of `scaleChannelsForward`: writes dInput = dOut * scale[channel] and accumulates
/// dScale (width) += the column sums of dOut * input. dInput may be dOut.
public func scaleChannelsBackward(dInput: UnsafeMutablePointer<Float>, dScale: UnsafeMutablePointer<Float>,
                                  dOut: UnsafePointer<Float>, input: UnsafePointer<Float>,
                                  scale: UnsafePointer<Float>, rows: Int, width: Int) {
    for r in 0..<rows {
        let g = dOut + r * width, x = input + r * width
        for c in 0..<width { dScale[c] += g[c] * x[c] }
    }
    Parallel.forChunks(rows, grain: 64) { _, range in
        for r in range {
            let g = dOut + r * width, d = dInput + r * width
            for c in 0..<width { d[c] = g[c] * scale[c] }
        }
    }
}
