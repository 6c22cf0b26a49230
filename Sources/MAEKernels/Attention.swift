import CAVX512

/// Multi-head self-attention core (after the qkv Linear, before the output projection).
/// qkv (B,N,3D) with rows [q | k | v] and heads contiguous inside each (timm / MAE layout);
/// out (B,N,D) heads merged back; probs (B,H,N,N) softmax(q k^T * scale + bias) saved for the
/// backward. `bias` (H,N,N), shared by every image, is an additive score bias (BEiT's relative
/// position bias); nil for none. Work is split over batch x heads, each product single-threaded
/// inside its worker. `bf16` (`Precision.bf16` where our AVX512-BF16 kernel runs,
/// `BF16Matmul.Backend.vdpbf16ps`): both products take bf16 operands with fp32 accumulation, as
/// autocast's; the scale, bias and softmax stay fp32 (measured on a Zen 5: attention's share of the
/// ViT-B/16 bf16 forward 16.5% -> 12.5%). Elsewhere the products stay fp32.
public func attentionForward(out: UnsafeMutablePointer<Float>, probs: UnsafeMutablePointer<Float>,
                             qkv: UnsafePointer<Float>, bias: UnsafePointer<Float>? = nil,
                             batch: Int, tokens: Int, width: Int, heads: Int, bf16: Bool = false) {
    Profiler.measure(.attention) {
        let n = tokens, hd = width / heads, ld = 3 * width
        let scale = 1 / Float(hd).squareRoot()
        let ownBF16 = bf16 && BF16Matmul.backend == .vdpbf16ps
        Parallel.forChunks(batch * heads) { _, items in
            let scratch = ownBF16 ? BF16Scratch() : nil
            for bh in items {
                let b = bh / heads, h = bh % heads
                let q = qkv + b * n * ld + h * hd, k = q + width, v = q + 2 * width
                let p = probs + bh * n * n, o = out + b * n * width + h * hd
                if let scratch {
                    BF16Matmul.serialProduct(c: p, ldc: n, a: q, lda: ld, b: k, ldb: ld, bTransposed: true, m: n, k: hd, n: n,
                                             scratch: scratch)
                    scaleRow(p, n * n, scale)
                } else {
                    BLAS.gemmSerial(transB: true, m: n, n: n, k: hd, alpha: scale, a: q, lda: ld, b: k, ldb: ld,
                                    c: p, ldc: n)
                }
                if let scratch {
                    // bf16 only (fp32 keeps its Swift loops' exact sums): bias + row max, exp + row sum in AVX-512.
                    let maxes = scratch.rowStatistics(2 * n), sums = maxes + n
                    mae_tile_add_bias_max(p, n, n, n, bias.map { $0 + h * n * n }, n, nil, nil, 0, 0, 0, maxes)
                    mae_tile_exp_sum(p, n, n, n, maxes, sums)
                    for r in 0..<n { scaleRow(p + r * n, n, 1 / sums[r]) }
                } else {
                    if let bias { addRow(p, bias + h * n * n, n * n) }
                    for r in 0..<n { softmaxRow(p + r * n, n) }
                }
                if let scratch {
                    BF16Matmul.serialProduct(c: o, ldc: width, a: p, lda: n, b: v, ldb: ld, bTransposed: false, m: n, k: n,
                                             n: hd, scratch: scratch)
                } else {
                    BLAS.gemmSerial(m: n, n: hd, k: n, a: p, lda: n, b: v, ldb: ld, c: o, ldc: width)
                }
            }
        }
    }
}

/// Accumulates: dQKV (B,N,3D) += gradient through the attention core, and with `dBias` (H,N,N)
/// the gradient of the forward's shared bias (summed over the images). `bf16`: the four products per
/// head in bf16 as `attentionForward`'s.
/// dOut (B,N,D), qkv (B,N,3D), probs (B,H,N,N) from the forward. With `dBias` the work is split
/// over heads (each worker owns its heads' bias gradient), else over batch x heads.
public func attentionBackward(dQKV: UnsafeMutablePointer<Float>, dBias: UnsafeMutablePointer<Float>? = nil,
                              dOut: UnsafePointer<Float>, qkv: UnsafePointer<Float>, probs: UnsafePointer<Float>,
                              batch: Int, tokens: Int, width: Int, heads: Int, bf16: Bool = false) {
    Profiler.measure(.attention) {
        let n = tokens, hd = width / heads, ld = 3 * width
        let scale = 1 / Float(hd).squareRoot()
        let ownBF16 = bf16 && BF16Matmul.backend == .vdpbf16ps
        /// One (b, h) slice; dS is a scratch (N,N): dP, then dS.
        func slice(_ b: Int, _ h: Int, _ dS: UnsafeMutablePointer<Float>, _ scratch: BF16Scratch?) {
            let q = qkv + b * n * ld + h * hd, k = q + width, v = q + 2 * width
            let dq = dQKV + b * n * ld + h * hd, dk = dq + width, dv = dq + 2 * width
            let dO = dOut + b * n * width + h * hd
            let p = probs + (b * heads + h) * n * n
            // dV += P^T dO;  dP = dO V^T
            if let scratch {
                BF16Matmul.serialProduct(c: dv, ldc: ld, a: p, lda: n, aTransposed: true, b: dO, ldb: width, bTransposed: false,
                                         m: n, k: n, n: hd, accumulate: true, scratch: scratch)
                BF16Matmul.serialProduct(c: dS, ldc: n, a: dO, lda: width, b: v, ldb: ld, bTransposed: true, m: n, k: hd, n: n,
                                         scratch: scratch)
            } else {
                BLAS.gemmSerial(transA: true, m: n, n: hd, k: n, a: p, lda: n, b: dO, ldb: width,
                                beta: 1, c: dv, ldc: ld)
                BLAS.gemmSerial(transB: true, m: n, n: n, k: hd, a: dO, lda: width, b: v, ldb: ld, c: dS, ldc: n)
            }
            // dLogits = P * (dP - rowsum(dP * P)): the bias gradient; dS = dLogits * scale
            for r in 0..<n {
                let pr = p + r * n, dr = dS + r * n
                var dot: Float = 0
                for j in 0..<n { dot += pr[j] * dr[j] }
                if let dBias {
                    for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) }
                    addRow(dBias + (h * n + r) * n, dr, n)
                    for j in 0..<n { dr[j] *= scale }
                } else {
                    for j in 0..<n { dr[j] = pr[j] * (dr[j] - dot) * scale }
                }
            }
            // dQ += dS K;  dK += dS^T Q
            if let scratch {
                BF16Matmul.serialProduct(c: dq, ldc: ld, a: dS, lda: n, b: k, ldb: ld, bTransposed: false, m: n, k: n, n: hd,
                                         accumulate: true, scratch: scratch)
                BF16Matmul.serialProduct(c: dk, ldc: ld, a: dS, lda: n, aTransposed: true, b: q, ldb: ld, bTransposed: false,
                                         m: n, k: n, n: hd, accumulate: true, scratch: scratch)
            } else {
                BLAS.gemmSerial(m: n, n: hd, k: n, a: dS, lda: n, b: k, ldb: ld, beta: 1, c: dq, ldc: ld)
                BLAS.gemmSerial(transA: true, m: n, n: hd, k: n, a: dS, lda: n, b: q, ldb: ld, beta: 1, c: dk, ldc: ld)
            }
        }
        Parallel.forChunks(dBias == nil ? batch * heads : heads) { _, range in
            let dS = UnsafeMutablePointer<Float>.allocate(capacity: n * n)
            defer { dS.deallocate() }
            let scratch = ownBF16 ? BF16Scratch() : nil
            for item in range {
                if dBias == nil {
                    slice(item / heads, item % heads, dS, scratch)
                } else {
                    for b in 0..<batch { slice(b, item, dS, scratch) }
                }
            }
        }
    }
}

/// In-place softmax of one row of `n` logits.
@inline(__always) @usableFromInline
func softmaxRow(_ x: UnsafeMutablePointer<Float>, _ n: Int) {
    scaleRow(x, n, 1 / expShiftedRow(x, n, shift: rowMax(x, n)))
}

/// max_j x[j] (-inf for an empty row).
@inline(__always) @usableFromInline
func rowMax(_ x: UnsafePointer<Float>, _ n: Int) -> Float {
    var mx = -Float.infinity
    var j = 0
    if n >= 16 {
        var m16 = load16(x)
        j = 16
        while j + 16 <= n { let v = load16(x + j); m16 = m16.replacing(with: v, where: v .> m16); j += 16 }
        mx = m16.max()
    }
    while j < n { mx = max(mx, x[j]); j += 1 }
    return mx
}

/// In place x[j] = e^(x[j] - shift); returns the sum of the new values. `shift` >= every x[j]
/// keeps the exponentials in (0, 1] (the softmax's row max, or the attention row's log-sum-exp).
@inline(__always) @usableFromInline
func expShiftedRow(_ x: UnsafeMutablePointer<Float>, _ n: Int, shift: Float) -> Float {
    let mv = Vec16(repeating: shift)
    var acc = Vec16()
    var j = 0
    while j + 16 <= n { let e = exp16(load16(x + j) - mv); store16(e, x + j); acc += e; j += 16 }
    var sum = acc.sum()
    if j < n {
        let m = n - j
        let e = exp16(loadPartial(x + j, m, pad: shift) - mv)
        storePartial(e, x + j, m)
        for t in 0..<m { sum += e[t] }
    }
    return sum
}

/// x (n) *= s.
@inline(__always) @usableFromInline
func scaleRow(_ x: UnsafeMutablePointer<Float>, _ n: Int, _ s: Float) {
    let sv = Vec16(repeating: s)
    var j = 0
    while j + 16 <= n { store16(load16(x + j) * sv, x + j); j += 16 }
    while j < n { x[j] *= s; j += 1 }
}

/// sum_j a[j] * b[j].
@inline(__always) @usableFromInline
func dotRow(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
    var acc = Vec16()
    var j = 0
    while j + 16 <= n { acc = fma16(load16(a + j), load16(b + j), acc); j += 16 }
    var s = acc.sum()
    while j < n { s += a[j] * b[j]; j += 1 }
    return s
}

/// Row-wise softmax: out (R,W) = softmax(input (R,W)) over the last dimension.
public func softmaxForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, rows: Int, width: Int) {
    Parallel.forRanges(rows, grain: 8) { range in
        for r in range {
            (out + r * width).update(from: input + r * width, count: width)
            softmaxRow(out + r * width, width)
        }
    }
}

/// Accumulates: dInput (R,W) += softmax Jacobian^T dOut, from the forward's output `probs` (R,W).
public func softmaxBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                            probs: UnsafePointer<Float>, rows: Int, width: Int) {
    Parallel.forRanges(rows, grain: 8) { range in
        for r in range {
            let p = probs + r * width, d = dOut + r * width, dx = dInput + r * width
            var dot: Float = 0
            for j in 0..<width { dot += p[j] * d[j] }
            for j in 0..<width { dx[j] += p[j] * (d[j] - dot) }
        }
    }
}
