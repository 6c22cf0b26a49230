/// MAE's per-sample random masking, with the noise given so tests can reproduce PyTorch exactly.
public struct PatchMask: Sendable {
    public let batch: Int
    public let numPatches: Int
    /// Patches kept per sample: int(L * (1 - ratio)).
    public let keepCount: Int
    /// (B,Lk) kept patch indices, in order of increasing noise (MAE's ids_keep).
    public let keep: [Int]
    /// (B,L) position of each patch in the shuffled order (MAE's ids_restore).
    public let idsRestore: [Int]
    /// (B,L) 1 where a patch is removed, 0 where kept.
    public let mask: [Float]

    /// ids_shuffle = argsort(noise) per sample; the first `keepCount` are kept.
    /// noise (B,L); smaller noise means kept.
    public init(noise: [Float], batch: Int, numPatches l: Int, maskRatio: Double) {
        precondition(noise.count == batch * l, "noise must be (B,L)")
        let keepCount = Int(Double(l) * (1 - maskRatio))
        var keep = [Int](), restore = [Int](repeating: 0, count: batch * l)
        var mask = [Float](repeating: 1, count: batch * l)
        keep.reserveCapacity(batch * keepCount)
        for b in 0..<batch {
            let row = Array(noise[(b * l)..<((b + 1) * l)])
            let shuffle = (0..<l).sorted { row[$0] < row[$1] || (row[$0] == row[$1] && $0 < $1) }
            for (rank, patch) in shuffle.enumerated() {
                restore[b * l + patch] = rank
                if rank < keepCount { mask[b * l + patch] = 0 }
            }
            keep += shuffle.prefix(keepCount)
        }
        self.batch = batch
        numPatches = l
        self.keepCount = keepCount
        self.keep = keep
        self.idsRestore = restore
        self.mask = mask
    }

    /// No masking: every patch kept in its natural order.
    public static func none(batch: Int, numPatches l: Int) -> PatchMask {
        var noise = [Float]()
        for _ in 0..<batch { noise += (0..<l).map(Float.init) }
        return PatchMask(noise: noise, batch: batch, numPatches: l, maskRatio: 0)
    }
}

/// MAE's patchify: images (B,C,H,W) -> patches (B,L,P*P*C) in (h, w, p, q, c) order, channels last.
public func patchify(_ out: UnsafeMutablePointer<Float>, images: UnsafePointer<Float>, batch: Int,
                     channels c: Int, imgSize: Int, patch p: Int) {
    let g = imgSize / p, pd = p * p * c
    for b in 0..<batch {
        for l in 0..<(g * g) {
            let gy = l / g, gx = l % g
            let dst = out + (b * g * g + l) * pd
            for py in 0..<p {
                for px in 0..<p {
                    for ch in 0..<c {
                        dst[(py * p + px) * c + ch] =
                            images[((b * c + ch) * imgSize + gy * p + py) * imgSize + gx * p + px]
                    }
                }
            }
        }
    }
}

/// MAE's unpatchify, the inverse of `patchify`: patches (B,L,P*P*C) -> images (B,C,H,W).
public func unpatchify(_ out: UnsafeMutablePointer<Float>, patches: UnsafePointer<Float>, batch: Int,
                       channels c: Int, imgSize: Int, patch p: Int) {
    let g = imgSize / p, pd = p * p * c
    for b in 0..<batch {
        for l in 0..<(g * g) {
            let gy = l / g, gx = l % g
            let src = patches + (b * g * g + l) * pd
            for py in 0..<p {
                for px in 0..<p {
                    for ch in 0..<c {
                        out[((b * c + ch) * imgSize + gy * p + py) * imgSize + gx * p + px] =
                            src[(py * p + px) * c + ch]
                    }
                }
            }
        }
    }
}
