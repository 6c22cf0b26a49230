// BEiT's relative position bias (mmseg backbones/beit.py `BEiTAttention`): a learned table
// (L, H), L = (2 Wh - 1)(2 Ww - 1) + 3, and a fixed index (N, N), N = 1 + Wh Ww (the cls token
// first, then the Wh x Ww patches row-major), give the additive score bias
//   bias[h, i, j] = table[index[i, j], h]   (H, N, N), shared by every image,
// which the attention adds to scale q k^T before the softmax (`AttentionBias.dense`).

/// Sizes of one BEiT relative position bias: a Wh x Ww patch window plus the cls token, H heads.
public struct RelPosBiasSize: Equatable, Sendable {
    public var windowHeight, windowWidth, heads: Int

    public init(windowHeight: Int, windowWidth: Int, heads: Int) {
        precondition(windowHeight > 0 && windowWidth > 0 && heads > 0,
                     "bad relative position bias window \(windowHeight)x\(windowWidth), \(heads) heads")
        self.windowHeight = windowHeight; self.windowWidth = windowWidth; self.heads = heads
    }

    /// N = 1 + Wh Ww: the cls token and the window's patches.
    public var tokens: Int { 1 + windowHeight * windowWidth }
    /// The table's rows: (2 Wh - 1)(2 Ww - 1) patch-to-patch offsets, then cls->token, token->cls, cls->cls.
    public var tableRows: Int { (2 * windowHeight - 1) * (2 * windowWidth - 1) + 3 }
    /// The side of the square window whose table has `rows` rows, nil when none does.
    public static func squareWindow(tableRows rows: Int) -> Int? {
        let side = Int(((Double(rows - 3)).squareRoot() + 1) / 2 + 0.5)
        return rows > 3 && (2 * side - 1) * (2 * side - 1) + 3 == rows ? side : nil
    }

    /// mmseg's relative_position_index (N, N): for patches i = (ih, iw), j = (jh, jw) the row
    /// (ih - jh + Wh - 1)(2 Ww - 1) + (iw - jw + Ww - 1); row 0 (cls -> token) L - 3, column 0
    /// (token -> cls) L - 2, [0, 0] (cls -> cls) L - 1.
    public func index() -> [Int32] {
        let wh = windowHeight, ww = windowWidth, n = tokens, l = tableRows
        var index = [Int32](repeating: Int32(l - 3), count: n * n)
        for i in 1..<n { index[i * n] = Int32(l - 2) }
        index[0] = Int32(l - 1)
        for i in 0..<(wh * ww) {
            for j in 0..<(wh * ww) {
                let dh = i / ww - j / ww + wh - 1, dw = i % ww - j % ww + ww - 1
                index[(1 + i) * n + 1 + j] = Int32(dh * (2 * ww - 1) + dw)
            }
        }
        return index
    }
}

/// out (H, N, N), table (L, H), index (N, N) from `RelPosBiasSize.index`. Writes `out`.
public func relPosBiasForward(out: UnsafeMutablePointer<Float>, table: UnsafePointer<Float>, index: [Int32],
                              size s: RelPosBiasSize) {
    let n = s.tokens, h = s.heads
    precondition(index.count == n * n, "a relative position index of \(index.count) entries for \(n) tokens")
    for head in 0..<h {
        let o = out + head * n * n
        for ij in 0..<(n * n) { o[ij] = table[Int(index[ij]) * h + head] }
    }
}

/// dTable (L, H) += the scatter-add of dBias (H, N, N) through the index (each table entry sums the
/// bias gradients of every (i, j) that reads it).
public func relPosBiasBackward(dTable: UnsafeMutablePointer<Float>, dBias: UnsafePointer<Float>, index: [Int32],
                               size s: RelPosBiasSize) {
    let n = s.tokens, h = s.heads
    precondition(index.count == n * n, "a relative position index of \(index.count) entries for \(n) tokens")
    for head in 0..<h {
        let g = dBias + head * n * n
        for ij in 0..<(n * n) { dTable[Int(index[ij]) * h + head] += g[ij] }
    }
}
