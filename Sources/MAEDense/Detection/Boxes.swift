// Axis-aligned boxes as detectron2's `Boxes` holds them: XYXY in input pixels, float32, with no +1
// (a box from x0 to x1 is x1 - x0 wide). All arithmetic is float32 in torch's order, so results
// match detectron2 to the last bit where torch's CPU ops are exact.

/// One box (x0, y0, x1, y1) in pixels, x0 <= x1 and y0 <= y1 for a valid box.
public struct Box: Equatable, Sendable, CustomStringConvertible {
    public var x0, y0, x1, y1: Float

    public init(_ x0: Float, _ y0: Float, _ x1: Float, _ y1: Float) {
        self.x0 = x0; self.y0 = y0; self.x1 = x1; self.y1 = y1
    }

    /// A box from four values in XYXY order (a COCO-converted `[x0, y0, x1, y1]`).
    public init(xyxy v: [Float]) {
        precondition(v.count == 4, "a box has 4 coordinates, not \(v.count)")
        self.init(v[0], v[1], v[2], v[3])
    }

    public var width: Float { x1 - x0 }
    public var height: Float { y1 - y0 }
    /// `(x1 - x0) * (y1 - y0)`, negative for an inverted box (as detectron2's `area`).
    public var area: Float { width * height }
    public var values: [Float] { [x0, y0, x1, y1] }
    public var isFinite: Bool { x0.isFinite && y0.isFinite && x1.isFinite && y1.isFinite }

    /// detectron2 `Boxes.clip((h, w))`: x clamped to [0, w], y to [0, h].
    public func clipped(height h: Int, width w: Int) -> Box {
        let fw = Float(w), fh = Float(h)
        return Box(min(max(x0, 0), fw), min(max(y0, 0), fh), min(max(x1, 0), fw), min(max(y1, 0), fh))
    }

    /// detectron2 `Boxes.nonempty(threshold)`: both sides strictly larger than `threshold`.
    public func isNonEmpty(threshold: Float = 0) -> Bool { width > threshold && height > threshold }

    public var description: String { "[\(x0), \(y0), \(x1), \(y1)]" }
}

/// detectron2 `pairwise_intersection`: the overlap area, with each side clamped at 0.
public func intersectionArea(_ a: Box, _ b: Box) -> Float {
    let w = max(min(a.x1, b.x1) - max(a.x0, b.x0), 0)
    let h = max(min(a.y1, b.y1) - max(a.y0, b.y0), 0)
    return w * h
}

/// detectron2 `pairwise_iou` of one pair: intersection / (area a + area b - intersection), and 0
/// wherever the intersection is 0 (two empty boxes give 0, where torchvision's `box_iou` gives NaN).
public func intersectionOverUnion(_ a: Box, _ b: Box) -> Float {
    let inter = intersectionArea(a, b)
    return inter > 0 ? inter / (a.area + b.area - inter) : 0
}

/// detectron2 `pairwise_iou(boxes1, boxes2)`: (N, M) IoUs, row-major, row i for `first[i]`.
public func pairwiseIoU(_ first: [Box], _ second: [Box]) -> [Float] {
    var out = [Float](repeating: 0, count: first.count * second.count)
    for (i, a) in first.enumerated() {
        for (j, b) in second.enumerated() { out[i * second.count + j] = intersectionOverUnion(a, b) }
    }
    return out
}
