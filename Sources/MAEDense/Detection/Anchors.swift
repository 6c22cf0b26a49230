// detectron2 `DefaultAnchorGenerator`: per level, cell anchors of every (size, aspect ratio) centred
// at 0 and NOT rounded (torchvision's generator rounds them), shifted over the level's grid.

/// Anchors per pyramid level, as detectron2's `DefaultAnchorGenerator(sizes, aspect_ratios, strides, offset)`.
public struct AnchorGenerator: Equatable, Sendable {
    /// Anchor sizes (sqrt of the area, in input pixels) of each level.
    public let sizes: [[Double]]
    /// Height / width ratios of each level.
    public let aspectRatios: [[Double]]
    /// Each level's stride in input pixels.
    public let strides: [Int]
    /// Where the first anchor's centre sits, as a fraction of the stride (ViTDet: 0).
    public let offset: Double

    /// `sizes` and `aspectRatios` hold one list per level, or one list for all (detectron2's broadcast).
    public init(sizes: [[Double]], aspectRatios: [[Double]], strides: [Int], offset: Double = 0) {
        precondition(!strides.isEmpty && strides.allSatisfy { $0 > 0 }, "anchor strides \(strides)")
        precondition(offset >= 0 && offset < 1, "anchor offset \(offset) is outside [0, 1)")
        func broadcast(_ p: [[Double]], _ name: String) -> [[Double]] {
            precondition(p.count == 1 || p.count == strides.count,
                         "\(p.count) lists of anchor \(name) for \(strides.count) levels")
            return p.count == 1 ? Array(repeating: p[0], count: strides.count) : p
        }
        self.sizes = broadcast(sizes, "sizes")
        self.aspectRatios = broadcast(aspectRatios, "aspect ratios")
        self.strides = strides
        self.offset = offset
    }

    /// ViTDet's Mask R-CNN: sizes 32..512 on strides 4..64, ratios 0.5, 1, 2, offset 0.
    public static let vitDet = AnchorGenerator(sizes: [[32], [64], [128], [256], [512]],
                                               aspectRatios: [[0.5, 1, 2]], strides: [4, 8, 16, 32, 64])

    /// Anchors per location on each level (A): sizes x aspect ratios.
    public func anchorsPerLocation(level: Int) -> Int { sizes[level].count * aspectRatios[level].count }

    /// `generate_cell_anchors`: for each size, for each ratio a, w = sqrt(size^2 / a), h = a * w,
    /// the box (-w/2, -h/2, w/2, h/2), computed in double and stored as float32.
    public func cellAnchors(level: Int) -> [Box] {
        var out: [Box] = []
        for size in sizes[level] {
            let area = size * size
            for ratio in aspectRatios[level] {
                let w = (area / ratio).squareRoot(), h = ratio * w
                out.append(Box(Float(-w / 2), Float(-h / 2), Float(w / 2), Float(h / 2)))
            }
        }
        return out
    }

    /// The anchors of one level over a (height, width) grid, ordered (y, x, cell anchor): the cell
    /// anchor plus the shift (x * stride + offset * stride, y * stride + offset * stride), in float32.
    public func anchors(level: Int, height: Int, width: Int) -> [Box] {
        let cells = cellAnchors(level: level), s = Double(strides[level])
        var out: [Box] = []
        out.reserveCapacity(height * width * cells.count)
        for y in 0..<height {
            let sy = Float(offset * s + Double(y) * s)
            for x in 0..<width {
                let sx = Float(offset * s + Double(x) * s)
                for c in cells { out.append(Box(sx + c.x0, sy + c.y0, sx + c.x1, sy + c.y1)) }
            }
        }
        return out
    }

    /// The anchors of every level for grids of `(height, width)`, one list per level.
    public func anchors(gridSizes: [(height: Int, width: Int)]) -> [[Box]] {
        precondition(gridSizes.count == strides.count, "\(gridSizes.count) feature maps for \(strides.count) anchor levels")
        return gridSizes.indices.map { anchors(level: $0, height: gridSizes[$0].height, width: gridSizes[$0].width) }
    }
}
