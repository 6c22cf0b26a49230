import Foundation

// detectron2 `Box2BoxTransform`: the R-CNN box parameterisation (dx, dy, dw, dh), float32, no +1.

/// detectron2's `Box2BoxTransform(weights, scale_clamp)`.
public struct BoxTransform: Equatable, Sendable {
    /// (wx, wy, ww, wh): the RPN uses (1, 1, 1, 1), the box head (10, 10, 5, 5).
    public let weights: (Float, Float, Float, Float)
    /// The largest dw, dh `apply` lets through to `exp`: log(1000 / 16) by default.
    public let scaleClamp: Float

    public static let defaultScaleClamp = Float(log(1000.0 / 16))

    public init(weights: (Float, Float, Float, Float), scaleClamp: Float = BoxTransform.defaultScaleClamp) {
        self.weights = weights
        self.scaleClamp = scaleClamp
    }

    public static func == (a: BoxTransform, b: BoxTransform) -> Bool {
        a.weights == b.weights && a.scaleClamp == b.scaleClamp
    }

    /// `get_deltas(src, target)`: the deltas that move `source` (an anchor or proposal, width and
    /// height > 0) onto `target` (its ground truth): (wx (tcx - scx) / sw, wy (tcy - scy) / sh,
    /// ww log(tw / sw), wh log(th / sh)).
    public func deltas(from source: Box, to target: Box) -> (Float, Float, Float, Float) {
        precondition(source.width > 0, "Input boxes to Box2BoxTransform are not valid: \(source)")
        let sw = source.width, sh = source.height
        let scx = source.x0 + 0.5 * sw, scy = source.y0 + 0.5 * sh
        let tw = target.width, th = target.height
        let tcx = target.x0 + 0.5 * tw, tcy = target.y0 + 0.5 * th
        let (wx, wy, ww, wh) = weights
        return (wx * (tcx - scx) / sw, wy * (tcy - scy) / sh, ww * logf(tw / sw), wh * logf(th / sh))
    }

    /// `apply_deltas` for one box: dw, dh are divided by their weights and clamped at `scaleClamp`
    /// before `exp`; the result is XYXY around the shifted centre.
    public func apply(_ d: (Float, Float, Float, Float), to box: Box) -> Box {
        let w = box.width, h = box.height
        let cx = box.x0 + 0.5 * w, cy = box.y0 + 0.5 * h
        let (wx, wy, ww, wh) = weights
        let dx = d.0 / wx, dy = d.1 / wy
        let dw = min(d.2 / ww, scaleClamp), dh = min(d.3 / wh, scaleClamp)
        let pcx = dx * w + cx, pcy = dy * h + cy
        let pw = expf(dw) * w, ph = expf(dh) * h
        return Box(pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph)
    }

    /// `apply` over four consecutive deltas per box: `deltas` holds boxes.count * 4 values.
    public func apply(deltas: UnsafePointer<Float>, to boxes: [Box]) -> [Box] {
        boxes.indices.map { i in
            apply((deltas[4 * i], deltas[4 * i + 1], deltas[4 * i + 2], deltas[4 * i + 3]), to: boxes[i])
        }
    }
}
