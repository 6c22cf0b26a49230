// Fused, tiled self-attention with an online softmax (flash-attention 2's algorithm on the CPU):
// the scores of one query tile against one key tile live in a per-worker scratch and are never
// written out as an N x N matrix, so memory is O(N) per (batch, head) instead of O(N^2), and
// attention over 4096 tokens (ViTDet's global blocks) stays inside the caches.
//
// Layout as `attentionForward` (Attention.swift), so the model can call either: qkv (B,N,3D) with
// rows [q | k | v] and heads contiguous inside each, out (B,N,D) heads merged back. The score of
// query i and key j in head h is  s = scale * q_i . k_j + bias[i, j],  scale = Dh^-0.5.
import CAVX512
import Foundation

/// Whether the per-tile passes (bias + row max, exp + row sum) run as AVX-512 C
/// functions (CAVX512): on CPUs with AVX-512 F, where they take half the time of the AVX2 Swift loops
/// (-target-cpu haswell); every other CPU runs the Swift loops. Tests switch it to compare the two.
nonisolated(unsafe) var attentionTilesAVX512 = CPUFeatures.current.avx512

/// Tile sizes of the fused attention: queries and keys per tile (clamped to N).
public struct AttentionTiles: Equatable, Sendable {
    public var queries: Int
    public var keys: Int

    /// 256 x 256: the score tile (256 KB), the key/value tiles and the accumulator rows at head width
    /// 64 (64 KB each) stay in a 1-2 MB L2, and each OpenBLAS call is large enough that packing its
    /// operands is a small part of it (at 64 x 128 packing took 28% of the forward). Measured on 2
    /// cores (Zen 5, 1 thread, CPU time; scripts/time_attention.sh): N 4096, 12 heads, rel-pos
    /// forward 0.75 -> 0.65 s and backward 1.84 -> 1.54 s against 64 x 128; window blocks (N 196, one
    /// tile per window and head) 0.049 -> 0.042 s per 300 (window, head) slices.
    public init(queries: Int = 256, keys: Int = 256) {
        precondition(queries > 0 && keys > 0, "empty attention tile \(queries) x \(keys)")
        self.queries = queries; self.keys = keys
    }
}

/// Sizes of one fused attention call: qkv (B,N,3D), D = H * Dh.
public struct FlashAttentionSize: Equatable, Sendable {
    public var batch, tokens, width, heads: Int
    public var tiles: AttentionTiles

    public init(batch: Int, tokens: Int, width: Int, heads: Int, tiles: AttentionTiles = AttentionTiles()) {
        precondition(batch > 0 && tokens > 0 && heads > 0 && width % heads == 0,
                     "bad attention size: batch \(batch), tokens \(tokens), width \(width), heads \(heads)")
        self.batch = batch; self.tokens = tokens; self.width = width; self.heads = heads; self.tiles = tiles
    }

    public var headWidth: Int { width / heads }
    var queryTile: Int { min(tiles.queries, tokens) }
    var keyTile: Int { min(tiles.keys, tokens) }
    var queryTiles: Int { (tokens + queryTile - 1) / queryTile }
    var keyTiles: Int { (tokens + keyTile - 1) / keyTile }
}

/// An additive bias on the scores of every (b, h) slice. Values must be finite.
public enum AttentionBias {
    /// No bias.
    case none
    /// A dense bias (B*H, N, N), or (H, N, N) shared by every image when `sharedOverBatch`
    /// (BEiT's relative position bias).
    case dense(UnsafePointer<Float>, sharedOverBatch: Bool)
    /// ViTDet's decomposed relative position terms (RelPos.swift): the tokens form a
    /// (height, width) grid, N = height * width, and key (kh, kw) gets
    /// bias[i, (kh, kw)] = relH[i, kh] + relW[i, kw];  relH (B*H, N, height), relW (B*H, N, width).
    /// The N x N bias is never formed: each score tile adds its part on the fly.
    case decomposed(relH: UnsafePointer<Float>, relW: UnsafePointer<Float>, height: Int, width: Int)
}

/// Where the backward accumulates the bias gradient; must match the forward's `AttentionBias`.
public enum AttentionBiasGradient {
    /// No bias, or its gradient is not wanted.
    case none
    /// dBias with the dense bias's shape ((B*H, N, N), or (H, N, N) when shared over the batch).
    case dense(UnsafeMutablePointer<Float>)
    /// dRelH (B*H, N, height), dRelW (B*H, N, width): each sums dScores over the keys of its kh (kw).
    case decomposed(dRelH: UnsafeMutablePointer<Float>, dRelW: UnsafeMutablePointer<Float>)
}

/// out (B,N,D), logSumExp (B,H,N), qkv (B,N,3D). Writes `out` and `logSumExp`.
/// out = softmax(scale q k^T + bias) v per (b, h); logSumExp[b,h,i] = log sum_j e^(s_ij), kept for
/// the backward. Work is split over (image, head, query tile) items.
public func flashAttentionForward(out: UnsafeMutablePointer<Float>, logSumExp: UnsafeMutablePointer<Float>,
                                  qkv: UnsafePointer<Float>, bias: AttentionBias = .none,
                                  size s: FlashAttentionSize) {
    checkBias(bias, s)
    Profiler.measure(.attention) {
        let hd = s.headWidth, bq = s.queryTile, bk = s.keyTile
        forEachTile(s, tiles: s.queryTiles, wholeBatch: false, scratch: bq * bk + 5 * bq) { images, h, tile, scratch in
            let scores = scratch, rowMaxes = scratch + bq * bk, rowSums = rowMaxes + bq
            let tileMaxes = rowSums + bq, tileSums = tileMaxes + bq, rescales = tileSums + bq
            let q0 = tile * bq, rows = min(bq, s.tokens - q0)
            for b in images {
                let slice = AttentionSlice(s, b: b, h: h)
                let o = out + (b * s.tokens + q0) * s.width + h * hd
                for r in 0..<rows { (o + r * s.width).update(repeating: 0, count: hd) }
                rowMaxes.update(repeating: -.infinity, count: rows)
                rowSums.update(repeating: 0, count: rows)
                for k0 in stride(from: 0, to: s.tokens, by: bk) {
                    let cols = min(bk, s.tokens - k0)
                    slice.scores(scores, qkv, bias, q0: q0, rows: rows, k0: k0, cols: cols, maxes: tileMaxes)
                    // Online softmax: rescale what each row has so far to its new running max.
                    for r in 0..<rows {
                        let mx = max(rowMaxes[r], tileMaxes[r])
                        rescales[r] = exp(rowMaxes[r] - mx)
                        rowMaxes[r] = mx
                    }
                    expTileRows(scores, rows: rows, cols: cols, ld: bk, shift: rowMaxes, sums: tileSums)
                    for r in 0..<rows {
                        rowSums[r] = rowSums[r] * rescales[r] + tileSums[r]
                        if rescales[r] != 1 { scaleRow(o + r * s.width, hd, rescales[r]) }
                    }
                    BLAS.gemmSerial(m: rows, n: hd, k: cols, a: scores, lda: bk,
                                    b: slice.v(qkv) + k0 * slice.ld, ldb: slice.ld,
                                    beta: 1, c: o, ldc: s.width)
                }
                let lse = logSumExp + (b * s.heads + h) * s.tokens + q0
                for r in 0..<rows {
                    scaleRow(o + r * s.width, hd, 1 / rowSums[r])
                    lse[r] = rowMaxes[r] + log(rowSums[r])
                }
            }
        }
    }
}

/// Accumulates: dQKV (B,N,3D) += gradient through the attention, and the bias gradient into
/// `dBias`. dOut (B,N,D); out (B,N,D), logSumExp (B,H,N) and qkv, bias as the forward had them.
/// Flash-attention 2's backward: the probabilities are recomputed per tile from q, k and
/// logSumExp, P = e^(s - lse), then dP = dO v^T, dS = P * (dP - rowsum(dO * O)), and no two
/// workers ever add into the same gradient. With at least two (b, h) slices per worker each item
/// owns whole slices (5 tile products per tile pair). With fewer (one image, few heads, many
/// tokens) the work is split over tiles in two passes instead: over key tiles for dK, dV, then over
/// query tiles for dQ and the bias gradient, each recomputing the scores (7 tile products per
/// tile pair) - the price of needing no locks and no per-worker gradient copies.
public func flashAttentionBackward(dQKV: UnsafeMutablePointer<Float>, dBias: AttentionBiasGradient = .none,
                                   dOut: UnsafePointer<Float>, out: UnsafePointer<Float>,
                                   logSumExp: UnsafePointer<Float>, qkv: UnsafePointer<Float>,
                                   bias: AttentionBias = .none, size s: FlashAttentionSize) {
    checkBias(bias, s)
    switch (bias, dBias) {
    case (_, .none), (.dense, .dense), (.decomposed, .decomposed): break
    default: preconditionFailure("flashAttentionBackward: bias gradient \(dBias) does not match the bias \(bias)")
    }
    Profiler.measure(.attention) {
        let hd = s.headWidth, bq = s.queryTile, bk = s.keyTile, n = s.tokens
        // delta[b,h,i] = dO_i . O_i = rowsum(dP * P), the softmax backward's per-row term.
        let delta = UnsafeMutablePointer<Float>.allocate(capacity: s.batch * s.heads * n)
        defer { delta.deallocate() }
        Parallel.forEach(s.batch * s.heads) { bh in
            let b = bh / s.heads, h = bh % s.heads
            for i in 0..<n {
                let at = (b * n + i) * s.width + h * hd
                delta[bh * n + i] = dotRow(dOut + at, out + at, hd)
            }
        }
        /// P and then dS of one tile pair in `probs` and `grads` (rows x cols, leading dimension bk).
        func tileGradients(_ slice: AttentionSlice, _ probs: UnsafeMutablePointer<Float>,
                           _ grads: UnsafeMutablePointer<Float>, q0: Int, rows: Int, k0: Int, cols: Int) {
            slice.scores(probs, qkv, bias, q0: q0, rows: rows, k0: k0, cols: cols, maxes: nil)
            let lse = logSumExp + slice.bh * n + q0, d = delta + slice.bh * n + q0
            expTileRows(probs, rows: rows, cols: cols, ld: bk, shift: lse, sums: nil)
            BLAS.gemmSerial(transB: true, m: rows, n: cols, k: hd, a: slice.dOut(dOut) + q0 * s.width, lda: s.width,
                            b: slice.v(qkv) + k0 * slice.ld, ldb: slice.ld, c: grads, ldc: bk)
            for r in 0..<rows { subtractScaleRow(grads + r * bk, probs + r * bk, cols, d[r]) }
        }
        /// dV_j += P^T dO_i and dK_j += scale dS^T Q_i from one tile pair's P and dS.
        func keyGradients(_ slice: AttentionSlice, _ probs: UnsafePointer<Float>, _ grads: UnsafePointer<Float>,
                          q0: Int, rows: Int, k0: Int, cols: Int) {
            let dk = dQKV + (slice.b * n + k0) * slice.ld + s.width + slice.h * hd, dv = dk + s.width
            BLAS.gemmSerial(transA: true, m: cols, n: hd, k: rows, a: probs, lda: bk,
                            b: slice.dOut(dOut) + q0 * s.width, ldb: s.width, beta: 1, c: dv, ldc: slice.ld)
            BLAS.gemmSerial(transA: true, m: cols, n: hd, k: rows, alpha: slice.scale, a: grads, lda: bk,
                            b: slice.q(qkv) + q0 * slice.ld, ldb: slice.ld, beta: 1, c: dk, ldc: slice.ld)
        }
        /// dQ_i += scale dS K_j and the bias gradient of the tile pair.
        func queryGradients(_ slice: AttentionSlice, _ grads: UnsafePointer<Float>,
                            q0: Int, rows: Int, k0: Int, cols: Int) {
            BLAS.gemmSerial(m: rows, n: hd, k: cols, alpha: slice.scale, a: grads, lda: bk,
                            b: slice.k(qkv) + k0 * slice.ld, ldb: slice.ld,
                            beta: 1, c: dQKV + (slice.b * n + q0) * slice.ld + slice.h * hd, ldc: slice.ld)
            slice.accumulateBiasGradient(dBias, bias, grads, q0: q0, rows: rows, k0: k0, cols: cols)
        }
        var sharedBias = false
        if case .dense(_, true) = bias { sharedBias = true }
        if (sharedBias ? s.heads : s.batch * s.heads) >= 2 * Parallel.workers {
            // Enough (b, h) slices to keep every worker busy: one pass, each item owning whole
            // slices (with a bias shared over the batch, every image of its head), so each tile
            // pair's P and dS are computed once and feed dV, dK and dQ together.
            forEachTile(s, tiles: 1, wholeBatch: sharedBias, scratch: 2 * bq * bk) { images, h, _, scratch in
                let probs = scratch, grads = scratch + bq * bk
                for b in images {
                    let slice = AttentionSlice(s, b: b, h: h)
                    for k0 in stride(from: 0, to: n, by: bk) {
                        let cols = min(bk, n - k0)
                        for q0 in stride(from: 0, to: n, by: bq) {
                            let rows = min(bq, n - q0)
                            tileGradients(slice, probs, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                            keyGradients(slice, probs, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                            queryGradients(slice, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                        }
                    }
                }
            }
        } else {
            // Pass 1, over (image, head, key tile): dK_j and dV_j summed over every query tile.
            forEachTile(s, tiles: s.keyTiles, wholeBatch: false, scratch: 2 * bq * bk) { images, h, tile, scratch in
                let probs = scratch, grads = scratch + bq * bk
                let k0 = tile * bk, cols = min(bk, n - k0)
                for b in images {
                    let slice = AttentionSlice(s, b: b, h: h)
                    for q0 in stride(from: 0, to: n, by: bq) {
                        let rows = min(bq, n - q0)
                        tileGradients(slice, probs, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                        keyGradients(slice, probs, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                    }
                }
            }
            // Pass 2, over (image, head, query tile): dQ_i and the bias gradient over every key tile.
            forEachTile(s, tiles: s.queryTiles, wholeBatch: sharedBias, scratch: 2 * bq * bk) { images, h, tile, scratch in
                let probs = scratch, grads = scratch + bq * bk
                let q0 = tile * bq, rows = min(bq, n - q0)
                for b in images {
                    let slice = AttentionSlice(s, b: b, h: h)
                    for k0 in stride(from: 0, to: n, by: bk) {
                        let cols = min(bk, n - k0)
                        tileGradients(slice, probs, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                        queryGradients(slice, grads, q0: q0, rows: rows, k0: k0, cols: cols)
                    }
                }
            }
        }
    }
}

private func checkBias(_ bias: AttentionBias, _ s: FlashAttentionSize) {
    if case .decomposed(_, _, let height, let width) = bias {
        precondition(height * width == s.tokens, "decomposed bias grid \(height)x\(width) is not \(s.tokens) tokens")
    }
}

/// One (b, h) slice of the packed qkv: where its q, k, v, dOut rows start, and its bias.
private struct AttentionSlice {
    let s: FlashAttentionSize
    let b, h, bh, ld: Int
    let scale: Float

    init(_ s: FlashAttentionSize, b: Int, h: Int) {
        self.s = s; self.b = b; self.h = h; bh = b * s.heads + h; ld = 3 * s.width
        scale = 1 / Float(s.headWidth).squareRoot()
    }

    func q(_ qkv: UnsafePointer<Float>) -> UnsafePointer<Float> { qkv + b * s.tokens * ld + h * s.headWidth }
    func k(_ qkv: UnsafePointer<Float>) -> UnsafePointer<Float> { q(qkv) + s.width }
    func v(_ qkv: UnsafePointer<Float>) -> UnsafePointer<Float> { q(qkv) + 2 * s.width }
    func dOut(_ d: UnsafePointer<Float>) -> UnsafePointer<Float> { d + b * s.tokens * s.width + h * s.headWidth }

    /// tile (rows, cols; leading dimension keyTile) = scale q[q0..] k[k0..]^T + bias, and with
    /// `maxes` each row's max (rows).
    func scores(_ tile: UnsafeMutablePointer<Float>, _ qkv: UnsafePointer<Float>, _ bias: AttentionBias,
                q0: Int, rows: Int, k0: Int, cols: Int, maxes: UnsafeMutablePointer<Float>?) {
        let bk = s.keyTile, n = s.tokens
        BLAS.gemmSerial(transB: true, m: rows, n: cols, k: s.headWidth, alpha: scale,
                        a: q(qkv) + q0 * ld, lda: ld, b: k(qkv) + k0 * ld, ldb: ld, c: tile, ldc: bk)
        if attentionTilesAVX512 {
            switch bias {
            case .none:
                mae_tile_add_bias_max(tile, rows, cols, bk, nil, 0, nil, nil, 0, 0, 0, maxes)
            case .dense(let dense, let shared):
                mae_tile_add_bias_max(tile, rows, cols, bk, dense + ((shared ? h : bh) * n + q0) * n + k0, n,
                                      nil, nil, 0, 0, 0, maxes)
            case .decomposed(let relH, let relW, let gh, let gw):
                mae_tile_add_bias_max(tile, rows, cols, bk, nil, 0, relH + (bh * n + q0) * gh, relW + (bh * n + q0) * gw,
                                      gh, gw, k0, maxes)
            }
            return
        }
        switch bias {
        case .none: break
        case .dense(let dense, let shared):
            let base = dense + ((shared ? h : bh) * n + q0) * n + k0
            for r in 0..<rows { addRow(tile + r * bk, base + r * n, cols) }
        case .decomposed(let relH, let relW, let gh, let gw):
            let rh = relH + (bh * n + q0) * gh, rw = relW + (bh * n + q0) * gw
            for r in 0..<rows {
                // Keys k0..<k0+cols in runs of constant kh: each run adds relH[kh] + relW[kw...].
                var key = k0
                while key < k0 + cols {
                    let kh = key / gw, kw = key % gw, run = min(gw - kw, k0 + cols - key)
                    addRow(tile + r * bk + (key - k0), rw + r * gw + kw, run, plus: rh[r * gh + kh])
                    key += run
                }
            }
        }
        if let maxes { for r in 0..<rows { maxes[r] = rowMax(tile + r * bk, cols) } }
    }

    /// dBias += dS for the tile (dense), or dRelH / dRelW += dS summed over each run of keys.
    func accumulateBiasGradient(_ dBias: AttentionBiasGradient, _ bias: AttentionBias,
                                _ dS: UnsafePointer<Float>, q0: Int, rows: Int, k0: Int, cols: Int) {
        let bk = s.keyTile, n = s.tokens
        switch (dBias, bias) {
        case (.dense(let grad), .dense(_, let shared)):
            let base = grad + ((shared ? h : bh) * n + q0) * n + k0
            for r in 0..<rows { addRow(base + r * n, dS + r * bk, cols) }
        case (.decomposed(let dRelH, let dRelW), .decomposed(_, _, let gh, let gw)):
            let rh = dRelH + (bh * n + q0) * gh, rw = dRelW + (bh * n + q0) * gw
            for r in 0..<rows {
                var key = k0
                while key < k0 + cols {
                    let kh = key / gw, kw = key % gw, run = min(gw - kw, k0 + cols - key)
                    let g = dS + r * bk + (key - k0)
                    addRow(rw + r * gw + kw, g, run)
                    rh[r * gh + kh] += rowSum(g, run)
                    key += run
                }
            }
        default: break
        }
    }
}

/// In place tile[r, j] = e^(tile[r, j] - shift[r]) over rows x cols (leading dimension ld), and with
/// `sums` each row's sum of the new values.
private func expTileRows(_ tile: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int,
                         shift: UnsafePointer<Float>, sums: UnsafeMutablePointer<Float>?) {
    if attentionTilesAVX512 {
        mae_tile_exp_sum(tile, rows, cols, ld, shift, sums)
        return
    }
    for r in 0..<rows {
        let sum = expShiftedRow(tile + r * ld, cols, shift: shift[r])
        sums?[r] = sum
    }
}

/// dst (n) += src + plus.
@inline(__always) @usableFromInline
func addRow(_ dst: UnsafeMutablePointer<Float>, _ src: UnsafePointer<Float>, _ n: Int, plus: Float = 0) {
    let pv = Vec16(repeating: plus)
    var j = 0
    while j + 16 <= n { store16(load16(dst + j) + load16(src + j) + pv, dst + j); j += 16 }
    while j < n { dst[j] += src[j] + plus; j += 1 }
}

/// In place g[j] = p[j] * (g[j] - d): the softmax backward of one row, dS from dP.
@inline(__always)
private func subtractScaleRow(_ g: UnsafeMutablePointer<Float>, _ p: UnsafePointer<Float>, _ n: Int, _ d: Float) {
    let dv = Vec16(repeating: d)
    var j = 0
    while j + 16 <= n { store16(load16(p + j) * (load16(g + j) - dv), g + j); j += 16 }
    while j < n { g[j] = p[j] * (g[j] - d); j += 1 }
}

/// Runs body(images, h, tile, scratch) for every work item of one pass, split statically over the
/// workers, each with its own `scratch` floats. An item is one (image, head, tile), or with
/// `wholeBatch` one (head, tile) over every image: then a gradient shared over the batch (a dense
/// bias broadcast over it) has a single writer per (head, tile).
private func forEachTile(_ s: FlashAttentionSize, tiles: Int, wholeBatch: Bool, scratch: Int,
                         _ body: (Range<Int>, Int, Int, UnsafeMutablePointer<Float>) -> Void) {
    let perGroup = s.heads * tiles
    Parallel.forChunks((wholeBatch ? 1 : s.batch) * perGroup) { _, items in
        let buffer = UnsafeMutablePointer<Float>.allocate(capacity: scratch)
        defer { buffer.deallocate() }
        for item in items {
            let group = item / perGroup, h = item % perGroup / tiles, tile = item % tiles
            body(wholeBatch ? 0..<s.batch : group..<group + 1, h, tile, buffer)
        }
    }
}
