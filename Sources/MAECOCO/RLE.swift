// The COCO mask API (pycocotools' maskApi.c) in Swift.
//
// A mask of height h and width w is stored column-major: pixel (y, x) is at index x * h + y, as in
// pycocotools (which encodes Fortran-ordered arrays). Run-length counts alternate background and
// foreground runs and always start with a (possibly empty) background run.

/// A run-length encoded binary mask, exactly as pycocotools' `RLE` (column-major, counts start with 0s).
public struct RLE: Equatable, Hashable, Sendable {
    /// Mask height h (rows).
    public var height: Int
    /// Mask width w (columns).
    public var width: Int
    /// Alternating run lengths (background first) over the column-major pixel order; they sum to h * w.
    public var counts: [UInt32]

    /// An RLE from its parts; `counts` must start with a background run and sum to `height * width`.
    public init(height: Int, width: Int, counts: [UInt32]) {
        self.height = height
        self.width = width
        self.counts = counts
    }

    /// Encodes a column-major binary mask (rleEncode): `mask[x * height + y]` nonzero is foreground.
    public init(columnMajorMask mask: [UInt8], height: Int, width: Int) {
        precondition(mask.count == height * width, "mask has \(mask.count) values, expected \(height * width)")
        var counts: [UInt32] = []
        var previous: UInt8 = 0
        var run: UInt32 = 0
        for value in mask {
            let bit: UInt8 = value != 0 ? 1 : 0
            if bit != previous {
                counts.append(run)
                run = 0
                previous = bit
            }
            run += 1
        }
        counts.append(run)
        self.init(height: height, width: width, counts: counts)
    }

    /// Encodes a row-major binary mask (`mask[y * width + x]`, the layout of images in memory).
    public init(rowMajorMask mask: [UInt8], height: Int, width: Int) {
        precondition(mask.count == height * width, "mask has \(mask.count) values, expected \(height * width)")
        var columnMajor = [UInt8](repeating: 0, count: mask.count)
        for y in 0..<height {
            for x in 0..<width { columnMajor[x * height + y] = mask[y * width + x] }
        }
        self.init(columnMajorMask: columnMajor, height: height, width: width)
    }

    /// The mask as 0/1 bytes in column-major order (rleDecode): `[x * height + y]`.
    public func decodeColumnMajor() -> [UInt8] {
        var mask = [UInt8](repeating: 0, count: height * width)
        var position = 0
        var value: UInt8 = 0
        for count in counts {
            let end = min(position + Int(count), mask.count)
            if value == 1 && position < end {
                for i in position..<end { mask[i] = 1 }
            }
            position = end
            value ^= 1
        }
        return mask
    }

    /// The mask as 0/1 bytes in row-major order: `[y * width + x]`.
    public func decodeRowMajor() -> [UInt8] {
        let columnMajor = decodeColumnMajor()
        var mask = [UInt8](repeating: 0, count: columnMajor.count)
        for x in 0..<width {
            for y in 0..<height { mask[y * width + x] = columnMajor[x * height + y] }
        }
        return mask
    }

    /// Number of foreground pixels (rleArea).
    public var area: Int {
        var total = 0
        var j = 1
        while j < counts.count {
            total += Int(counts[j])
            j += 2
        }
        return total
    }

    /// Tight bounding box [x, y, w, h] of the foreground (rleToBbox); all zeros for an empty mask.
    ///
    /// As in maskApi.c, a foreground run that wraps from one column into the next makes the box span
    /// the full height.
    public var boundingBox: [Double] {
        let h = UInt32(truncatingIfNeeded: height), w = UInt32(truncatingIfNeeded: width)
        let m = (counts.count / 2) * 2
        if m == 0 || h == 0 { return [0, 0, 0, 0] }
        var xs = w, ys = h, xe: UInt32 = 0, ye: UInt32 = 0, cc: UInt32 = 0, xp: UInt32 = 0
        for j in 0..<m {
            cc &+= counts[j]
            let t = cc &- UInt32(j % 2)
            let y = t % h, x = (t &- y) / h
            if j % 2 == 0 {
                xp = x
            } else if xp < x {
                ys = 0
                ye = h - 1
            }
            xs = min(xs, x); xe = max(xe, x); ys = min(ys, y); ye = max(ye, y)
        }
        return [Double(xs), Double(ys), Double(xe &- xs &+ 1), Double(ye &- ys &+ 1)]
    }

    /// Union (or intersection) of masks of one size (rleMerge). Masks of different sizes give an
    /// empty 0 x 0 RLE, as in maskApi.c; no masks give an empty 0 x 0 RLE too.
    public static func merge(_ rles: [RLE], intersect: Bool = false) -> RLE {
        guard let first = rles.first else { return RLE(height: 0, width: 0, counts: []) }
        if rles.count == 1 { return first }
        let h = first.height, w = first.width
        var accumulated = first.counts
        for b in rles.dropFirst() {
            if b.height != h || b.width != w { return RLE(height: 0, width: 0, counts: []) }
            accumulated = mergeCounts(accumulated, b.counts, intersect: intersect)
        }
        return RLE(height: h, width: w, counts: accumulated)
    }

    /// The two-way merge of maskApi.c's rleMerge loop body.
    private static func mergeCounts(_ a: [UInt32], _ b: [UInt32], intersect: Bool) -> [UInt32] {
        guard !a.isEmpty, !b.isEmpty else { return [] }
        var out: [UInt32] = []
        out.reserveCapacity(a.count + b.count)
        var ca = a[0], cb = b[0]
        var v = false, va = false, vb = false
        var ia = 1, ib = 1
        var cc: UInt32 = 0, ct: UInt32 = 1
        while ct > 0 {
            let c = min(ca, cb)
            cc &+= c
            ct = 0
            ca -= c
            if ca == 0 && ia < a.count { ca = a[ia]; ia += 1; va.toggle() }
            ct &+= ca
            cb -= c
            if cb == 0 && ib < b.count { cb = b[ib]; ib += 1; vb.toggle() }
            ct &+= cb
            let vp = v
            v = intersect ? (va && vb) : (va || vb)
            if v != vp || ct == 0 {
                out.append(cc)
                cc = 0
            }
        }
        return out
    }

    /// Intersection and union pixel counts of two same-size masks (the rleIou inner loop).
    func intersectionAndUnion(with g: RLE) -> (intersection: UInt32, union: UInt32) {
        guard !counts.isEmpty, !g.counts.isEmpty else { return (0, 0) }
        var ca = counts[0], cb = g.counts[0]
        var va = false, vb = false
        var a = 1, b = 1
        var inter: UInt32 = 0, union: UInt32 = 0, ct: UInt32 = 1
        while ct > 0 {
            let c = min(ca, cb)
            if va || vb {
                union &+= c
                if va && vb { inter &+= c }
            }
            ct = 0
            ca -= c
            if ca == 0 && a < counts.count { ca = counts[a]; a += 1; va.toggle() }
            ct &+= ca
            cb -= c
            if cb == 0 && b < g.counts.count { cb = g.counts[b]; b += 1; vb.toggle() }
            ct &+= cb
        }
        return (inter, union)
    }

    /// IoU matrix `[d][g]` between detections and ground truths (rleIou). For a crowd ground truth the
    /// union is the detection's area; masks of different sizes give -1; as in maskApi.c, pairs whose
    /// bounding boxes do not overlap get 0 without looking at the masks.
    public static func iou(_ detections: [RLE], _ groundTruths: [RLE], isCrowd: [Bool]) -> [[Double]] {
        let dtBoxes = detections.map(\.boundingBox), gtBoxes = groundTruths.map(\.boundingBox)
        var out = boxIoU(dtBoxes, gtBoxes, isCrowd: isCrowd)
        for d in detections.indices {
            for g in groundTruths.indices where out[d][g] > 0 {
                let dt = detections[d], gt = groundTruths[g]
                if dt.height != gt.height || dt.width != gt.width {
                    out[d][g] = -1
                    continue
                }
                var (inter, union) = dt.intersectionAndUnion(with: gt)
                if inter == 0 {
                    union = 1
                } else if g < isCrowd.count && isCrowd[g] {
                    union = UInt32(truncatingIfNeeded: dt.area)
                }
                out[d][g] = Double(inter) / Double(union)
            }
        }
        return out
    }

    /// IoU matrix `[d][g]` between boxes [x, y, w, h] (bbIou); for a crowd ground truth the union is
    /// the detection's area.
    public static func boxIoU(_ detections: [[Double]], _ groundTruths: [[Double]], isCrowd: [Bool]) -> [[Double]] {
        var out = [[Double]](repeating: [Double](repeating: 0, count: groundTruths.count), count: detections.count)
        for (g, gb) in groundTruths.enumerated() {
            let ga = gb[2] * gb[3]
            let crowd = g < isCrowd.count && isCrowd[g]
            for (d, db) in detections.enumerated() {
                let da = db[2] * db[3]
                let w = Swift.min(db[2] + db[0], gb[2] + gb[0]) - Swift.max(db[0], gb[0])
                if w <= 0 { continue }
                let h = Swift.min(db[3] + db[1], gb[3] + gb[1]) - Swift.max(db[1], gb[1])
                if h <= 0 { continue }
                let i = w * h
                let u = crowd ? da : da + ga - i
                out[d][g] = i / u
            }
        }
        return out
    }
}

// MARK: - Polygons and boxes

extension RLE {
    /// Rasterises one polygon [x0, y0, x1, y1, ...] exactly as maskApi.c's rleFrPoly: the outline is
    /// upsampled by 5, walked densely, and the column crossings are rounded back to pixel centres.
    public init(polygon xy: [Double], height: Int, width: Int) {
        let scale = 5.0
        let k = xy.count / 2
        var x = [Int](repeating: 0, count: k + 1), y = [Int](repeating: 0, count: k + 1)
        for j in 0..<k {
            x[j] = cInt(scale * xy[2 * j] + 0.5)
            y[j] = cInt(scale * xy[2 * j + 1] + 0.5)
        }
        if k > 0 { x[k] = x[0]; y[k] = y[0] }
        // Dense boundary points (u, v) in the upsampled grid.
        var u: [Int] = [], v: [Int] = []
        for j in 0..<k {
            var xs = x[j], xe = x[j + 1], ys = y[j], ye = y[j + 1]
            let dx = abs(xe - xs), dy = abs(ys - ye)
            let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye)
            if flip { swap(&xs, &xe); swap(&ys, &ye) }
            let s = dx >= dy ? Double(ye - ys) / Double(dx) : Double(xe - xs) / Double(dy)
            if dx >= dy {
                for d in 0...dx {
                    let t = flip ? dx - d : d
                    u.append(t + xs)
                    v.append(cInt(Double(ys) + s * Double(t) + 0.5))
                }
            } else {
                for d in 0...dy {
                    let t = flip ? dy - d : d
                    v.append(t + ys)
                    u.append(cInt(Double(xs) + s * Double(t) + 0.5))
                }
            }
        }
        // Points where the boundary crosses a pixel column, downsampled back to pixel coordinates.
        var starts: [UInt32] = []
        if u.count > 1 {
            for j in 1..<u.count where u[j] != u[j - 1] {
                var xd = Double(u[j] < u[j - 1] ? u[j] : u[j] - 1)
                xd = (xd + 0.5) / scale - 0.5
                if xd.rounded(.down) != xd || xd < 0 || xd > Double(width - 1) { continue }
                var yd = Double(v[j] < v[j - 1] ? v[j] : v[j - 1])
                yd = (yd + 0.5) / scale - 0.5
                if yd < 0 { yd = 0 } else if yd > Double(height) { yd = Double(height) }
                yd = yd.rounded(.up)
                starts.append(UInt32(truncatingIfNeeded: Int(xd) * height + Int(yd)))
            }
        }
        starts.append(UInt32(truncatingIfNeeded: height * width))
        starts.sort()
        // Differences between sorted crossings are the runs; a zero run merges its neighbours.
        var previous: UInt32 = 0
        for j in starts.indices {
            let t = starts[j]
            starts[j] = t &- previous
            previous = t
        }
        var runs: [UInt32] = [starts[0]]
        var j = 1
        while j < starts.count {
            if starts[j] > 0 {
                runs.append(starts[j]); j += 1
            } else {
                j += 1
                if j < starts.count { runs[runs.count - 1] &+= starts[j]; j += 1 }
            }
        }
        self.init(height: height, width: width, counts: runs)
    }

    /// The mask of a box [x, y, w, h] (rleFrBbox: the box's outline through rleFrPoly).
    public init(box bb: [Double], height: Int, width: Int) {
        let xs = bb[0], xe = bb[0] + bb[2], ys = bb[1], ye = bb[1] + bb[3]
        self.init(polygon: [xs, ys, xs, ye, xe, ye, xe, ys], height: height, width: width)
    }

    /// The merged mask of an object's polygons, as pycocotools' `annToRLE` (frPyObjects + merge).
    ///
    /// pycocotools' quirk is kept: when the first polygon has exactly 4 numbers, every entry is read as
    /// a box [x, y, w, h].
    public init(polygons: [[Double]], height: Int, width: Int) {
        let asBoxes = polygons.first?.count == 4 && polygons.allSatisfy { $0.count == 4 }
        let parts = polygons.map {
            asBoxes ? RLE(box: $0, height: height, width: width) : RLE(polygon: $0, height: height, width: width)
        }
        if parts.isEmpty {
            self.init(height: height, width: width, counts: [UInt32(truncatingIfNeeded: height * width)])
        } else {
            self = RLE.merge(parts)
        }
    }
}

/// C's double -> int conversion as x86 performs it (truncation; NaN or out of range gives INT_MIN),
/// so degenerate polygon edges behave as in maskApi.c instead of trapping.
@inline(__always)
func cInt(_ value: Double) -> Int {
    guard value.isFinite, value > -2147483649.0, value < 2147483648.0 else { return Int(Int32.min) }
    return Int(value)
}

// MARK: - Compressed counts strings

extension RLE {
    /// The compressed counts string (rleToString): counts after the second are stored as differences
    /// from the count two places back, 5 bits per character plus a continuation bit, characters 48-111.
    public var compressedCounts: String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(counts.count * 2)
        for i in counts.indices {
            var x = Int64(counts[i])
            if i > 2 { x -= Int64(counts[i - 2]) }
            var more = true
            while more {
                var c = UInt8(truncatingIfNeeded: x & 0x1f)
                x >>= 5
                more = (c & 0x10) != 0 ? x != -1 : x != 0
                if more { c |= 0x20 }
                bytes.append(c + 48)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Decodes a compressed counts string (rleFrString). Returns nil if a character is outside 48-111
    /// or the string ends in the middle of a number.
    public init?(compressedCounts string: String, height: Int, width: Int) {
        var counts: [UInt32] = []
        var x: Int64 = 0, k: Int64 = 0
        var inNumber = false
        for byte in string.utf8 {
            guard byte >= 48 && byte <= 111 else { return nil }
            let c = Int64(byte - 48)
            x |= (c & 0x1f) << (5 * k)
            k += 1
            inNumber = true
            if c & 0x20 == 0 {
                if c & 0x10 != 0 { x |= -1 << (5 * k) }
                if counts.count > 2 { x += Int64(counts[counts.count - 2]) }
                counts.append(UInt32(truncatingIfNeeded: x))
                x = 0; k = 0; inNumber = false
            } else if k > 12 {
                return nil
            }
        }
        if inNumber { return nil }
        self.init(height: height, width: width, counts: counts)
    }
}
