// Decomposed relative position terms of ViTDet / MViTv2 (detectron2's `get_rel_pos` and
// `add_decomposed_rel_pos`), split into their two steps:
//   gather: a learned table (L, Dh) per axis -> R (qS, kS, Dh), R[i, j] = table[i - j + kS - 1]
//           (after a linear resize of the table to 2 max(qS, kS) - 1 rows when L differs);
//   terms:  relH[b,h,(qh,qw),kh] = q[b,(qh,qw),h] . Rh[qh,kh],  relW likewise with Rw[qw,kw],
//           which the attention adds to its scores as bias[(qh,qw),(kh,kw)] = relH[kh] + relW[kw]
//           (`AttentionBias.decomposed`). The terms use the UNSCALED q: the scores are
//           (q * scale) k^T but detectron2 adds q . R, not (q * scale) . R.

/// Sizes of one axis's table gather: table (L, C) -> R (qS, kS, C).
public struct RelPosGatherSize: Equatable, Sendable {
    public var querySize, keySize, tableLength, channels: Int

    public init(querySize: Int, keySize: Int, tableLength: Int, channels: Int) {
        precondition(querySize > 0 && keySize > 0 && tableLength > 0 && channels > 0,
                     "bad rel-pos gather q \(querySize) k \(keySize) table \(tableLength)x\(channels)")
        self.querySize = querySize; self.keySize = keySize; self.tableLength = tableLength; self.channels = channels
    }

    /// Rows the table is used at: 2 max(qS, kS) - 1, one per relative distance.
    public var resizedLength: Int { 2 * max(querySize, keySize) - 1 }

    /// detectron2's row of R[i, j]: i max(kS/qS, 1) - j max(qS/kS, 1) + (kS - 1) max(qS/kS, 1),
    /// truncated, in float32 as torch computes it (so unequal sizes round as torch does).
    func row(_ i: Int, _ j: Int) -> Int {
        let qScale = Float(max(Double(keySize) / Double(querySize), 1))
        let kScale = Float(max(Double(querySize) / Double(keySize), 1))
        let offset = Float(Double(keySize - 1) * max(Double(querySize) / Double(keySize), 1))
        return Int((Float(i) * qScale - Float(j) * kScale) + offset)
    }
}

/// out R (qS, kS, C), table (L, C). Writes `out`.
/// When L != 2 max(qS, kS) - 1 the table is first resized along L as torch's
/// F.interpolate(table^T (1, C, L), size: 2 max - 1, mode: "linear", align_corners: false).
public func relPosGatherForward(out: UnsafeMutablePointer<Float>, table: UnsafePointer<Float>,
                                size s: RelPosGatherSize) {
    withResizedTable(table, s) { rows in
        for i in 0..<s.querySize {
            for j in 0..<s.keySize {
                (out + (i * s.keySize + j) * s.channels).update(from: rows + s.row(i, j) * s.channels, count: s.channels)
            }
        }
    }
}

/// dTable (L, C), dOut (qS, kS, C). Accumulates into dTable: each R[i, j] scatter-adds into its
/// table row, then (when the forward resized) back through the interpolation's taps.
public func relPosGatherBackward(dTable: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                 size s: RelPosGatherSize) {
    let c = s.channels, lr = s.resizedLength
    let resized = lr != s.tableLength
    let dRows = resized ? UnsafeMutablePointer<Float>.allocate(capacity: lr * c) : dTable
    if resized { dRows.initialize(repeating: 0, count: lr * c) }
    defer { if resized { dRows.deallocate() } }
    for i in 0..<s.querySize {
        for j in 0..<s.keySize { addRow(dRows + s.row(i, j) * c, dOut + (i * s.keySize + j) * c, c) }
    }
    guard resized else { return }
    let taps = InterpolationTaps.linear(in: s.tableLength, out: lr, alignCorners: false)
    for o in 0..<lr {
        for t in 0..<taps.taps {
            let w = taps.weight[o * taps.taps + t], dst = dTable + taps.index[o * taps.taps + t] * c
            for ch in 0..<c { dst[ch] += w * dRows[o * c + ch] }
        }
    }
}

/// Calls `body` with the table's rows at 2 max(qS, kS) - 1 relative distances: the table itself,
/// or its linear resize in a temporary buffer.
private func withResizedTable(_ table: UnsafePointer<Float>, _ s: RelPosGatherSize,
                              _ body: (UnsafePointer<Float>) -> Void) {
    let c = s.channels, lr = s.resizedLength
    guard lr != s.tableLength else { body(table); return }
    let taps = InterpolationTaps.linear(in: s.tableLength, out: lr, alignCorners: false)
    let rows = UnsafeMutablePointer<Float>.allocate(capacity: lr * c)
    defer { rows.deallocate() }
    for o in 0..<lr {
        for ch in 0..<c {
            // Summed tap by tap in torch's order: w0 x[i0] + w1 x[i1].
            var v: Float = 0
            for t in 0..<taps.taps { v += taps.weight[o * taps.taps + t] * table[taps.index[o * taps.taps + t] * c + ch] }
            rows[o * c + ch] = v
        }
    }
    body(rows)
}

/// Sizes of the rel-pos terms of one attention call: q from qkv (B,N,3D) as the attention reads
/// it, the query grid (qH, qW) with N = qH qW, the key grid (kH, kW).
public struct RelPosTermsSize: Equatable, Sendable {
    public var batch, width, heads: Int
    public var queryHeight, queryWidth, keyHeight, keyWidth: Int

    public init(batch: Int, width: Int, heads: Int, queryHeight: Int, queryWidth: Int,
                keyHeight: Int, keyWidth: Int) {
        precondition(batch > 0 && heads > 0 && width % heads == 0 && queryHeight > 0 && queryWidth > 0
                     && keyHeight > 0 && keyWidth > 0, "bad rel-pos terms size")
        self.batch = batch; self.width = width; self.heads = heads
        self.queryHeight = queryHeight; self.queryWidth = queryWidth
        self.keyHeight = keyHeight; self.keyWidth = keyWidth
    }

    /// Square self-attention grid, as ViTDet's windows (14 x 14) and global blocks (64 x 64).
    public init(batch: Int, width: Int, heads: Int, gridHeight: Int, gridWidth: Int) {
        self.init(batch: batch, width: width, heads: heads, queryHeight: gridHeight, queryWidth: gridWidth,
                  keyHeight: gridHeight, keyWidth: gridWidth)
    }

    public var tokens: Int { queryHeight * queryWidth }
    public var headWidth: Int { width / heads }
}

/// relH (B*H, N, kH), relW (B*H, N, kW); qkv (B,N,3D) (only its q part is read, unscaled);
/// rh (qH, kH, Dh) and rw (qW, kW, Dh) from `relPosGatherForward`. Writes relH and relW.
/// relH rows of one query row qh are one product (qW, Dh) x Rh[qh]^T; relW likewise per column qw.
public func relPosTermsForward(relH: UnsafeMutablePointer<Float>, relW: UnsafeMutablePointer<Float>,
                               qkv: UnsafePointer<Float>, rh: UnsafePointer<Float>, rw: UnsafePointer<Float>,
                               size s: RelPosTermsSize) {
    let hd = s.headWidth, ld = 3 * s.width, n = s.tokens, qw = s.queryWidth, kh = s.keyHeight, kw = s.keyWidth
    Parallel.forEach(s.batch * s.heads) { bh in
        let q = qkv + (bh / s.heads) * n * ld + (bh % s.heads) * hd
        for y in 0..<s.queryHeight {
            BLAS.gemmSerial(transB: true, m: qw, n: kh, k: hd, a: q + y * qw * ld, lda: ld,
                            b: rh + y * kh * hd, ldb: hd, c: relH + (bh * n + y * qw) * kh, ldc: kh)
        }
        for x in 0..<qw {
            BLAS.gemmSerial(transB: true, m: s.queryHeight, n: kw, k: hd, a: q + x * ld, lda: qw * ld,
                            b: rw + x * kw * hd, ldb: hd, c: relW + (bh * n + x) * kw, ldc: qw * kw)
        }
    }
}

/// Accumulates: dQKV (B,N,3D) (its q part), dRh (qH, kH, Dh), dRw (qW, kW, Dh) += the gradients
/// of the terms, from dRelH (B*H, N, kH) and dRelW (B*H, N, kW) (the attention backward's
/// `AttentionBiasGradient.decomposed`). Two passes, over query rows qh then query columns qw, each
/// summing over every (b, h) inside one worker, so the shared Rh[qh] / Rw[qw] and the q rows are
/// each updated by one worker only.
public func relPosTermsBackward(dQKV: UnsafeMutablePointer<Float>, dRh: UnsafeMutablePointer<Float>,
                                dRw: UnsafeMutablePointer<Float>,
                                dRelH: UnsafePointer<Float>, dRelW: UnsafePointer<Float>,
                                qkv: UnsafePointer<Float>, rh: UnsafePointer<Float>, rw: UnsafePointer<Float>,
                                size s: RelPosTermsSize) {
    let hd = s.headWidth, ld = 3 * s.width, n = s.tokens, qw = s.queryWidth, kh = s.keyHeight, kw = s.keyWidth
    Parallel.forEach(s.queryHeight) { y in
        for bh in 0..<(s.batch * s.heads) {
            let at = (bh / s.heads) * n * ld + (bh % s.heads) * hd + y * qw * ld
            let g = dRelH + (bh * n + y * qw) * kh
            // dq rows (qW, Dh) += g (qW, kH) Rh[qh] (kH, Dh);  dRh[qh] (kH, Dh) += g^T q rows.
            BLAS.gemmSerial(m: qw, n: hd, k: kh, a: g, lda: kh, b: rh + y * kh * hd, ldb: hd,
                            beta: 1, c: dQKV + at, ldc: ld)
            BLAS.gemmSerial(transA: true, m: kh, n: hd, k: qw, a: g, lda: kh, b: qkv + at, ldb: ld,
                            beta: 1, c: dRh + y * kh * hd, ldc: hd)
        }
    }
    Parallel.forEach(qw) { x in
        for bh in 0..<(s.batch * s.heads) {
            let at = (bh / s.heads) * n * ld + (bh % s.heads) * hd + x * ld
            let g = dRelW + (bh * n + x) * kw
            BLAS.gemmSerial(m: s.queryHeight, n: hd, k: kw, a: g, lda: qw * kw, b: rw + x * kw * hd, ldb: hd,
                            beta: 1, c: dQKV + at, ldc: qw * ld)
            BLAS.gemmSerial(transA: true, m: kw, n: hd, k: s.queryHeight, a: g, lda: qw * kw, b: qkv + at,
                            ldb: qw * ld, beta: 1, c: dRw + x * kw * hd, ldc: hd)
        }
    }
}
