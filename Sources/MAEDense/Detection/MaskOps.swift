import MAEKernels

// Mask R-CNN's two mask conversions, as detectron2 does them for bit masks: training targets
// (`BitMasks.crop_and_resize`) and pasting predictions into the image (`paste_masks_in_image`).

/// detectron2 `BitMasks.crop_and_resize(boxes, size)`: each instance mask (row-major H*W bytes, 0
/// or 1, e.g. a decoded COCO RLE) is RoIAligned over its box, `ROIAlign((S, S), 1.0, 0,
/// aligned=True)`, then binarised at >= 0.5. Returns (N, S, S) of 0 / 1, mask i cut by box i.
public func maskTargets(masks: [[UInt8]], height: Int, width: Int, boxes: [Box], size: Int = 28) -> Tensor {
    precondition(masks.count == boxes.count, "\(masks.count) masks for \(boxes.count) boxes")
    let out = Tensor([boxes.count, size, size])
    guard !boxes.isEmpty else { return out }
    let align = RoIAlignSize(batch: 1, channels: 1, height: height, width: width, pooledHeight: size,
                             pooledWidth: size, spatialScale: 1, samplingRatio: 0, aligned: true)
    let plane = Tensor([1, 1, height, width])
    for (i, (mask, box)) in zip(masks, boxes).enumerated() {
        precondition(mask.count == height * width, "mask \(i) holds \(mask.count) pixels, not \(height)x\(width)")
        for p in 0..<mask.count { plane[p] = mask[p] != 0 ? 1 : 0 }
        let roi: [Float] = [0, box.x0, box.y0, box.x1, box.y1]
        roiAlignForward(out: out.data + i * size * size, input: plane.data, rois: roi, roiCount: 1, size: align)
    }
    for i in 0..<out.count { out[i] = out[i] >= 0.5 ? 1 : 0 }
    return out
}

/// detectron2 `paste_masks_in_image(masks, boxes, (H, W), threshold)` on CPU: each (M, M) soft
/// mask is `grid_sample`d (bilinear, zeros padding, align_corners=False) at the centres of the image
/// pixels inside its box's region [floor(x0) - 1, ceil(x1) + 1) (clamped to the image), with
/// the box taken as continuous coordinates, and binarised at >= `threshold`; pixels outside that
/// region are 0. `probabilities` is (N, M, M) (after the sigmoid); returns N row-major H*W masks.
public func pasteMasks(probabilities: Tensor, boxes: [Box], imageHeight: Int, imageWidth: Int,
                       threshold: Float = 0.5) -> [[UInt8]] {
    precondition(probabilities.shape.count == 3 && probabilities.shape[1] == probabilities.shape[2],
                 "Only square mask predictions are supported, not \(probabilities.shape)")
    precondition(probabilities.shape[0] == boxes.count, "\(probabilities.shape[0]) masks for \(boxes.count) boxes")
    let m = probabilities.shape[1]
    return boxes.enumerated().map { n, box in
        var out = [UInt8](repeating: 0, count: imageHeight * imageWidth)
        let mask = probabilities.data + n * m * m
        let xStart = max(Int(box.x0.rounded(.down)) - 1, 0), yStart = max(Int(box.y0.rounded(.down)) - 1, 0)
        let xEnd = min(Int(box.x1.rounded(.up)) + 1, imageWidth), yEnd = min(Int(box.y1.rounded(.up)) + 1, imageHeight)
        guard xStart < xEnd && yStart < yEnd else { return out }
        // grid_sample's unnormalisation (align_corners=False): ix = ((g + 1) * M - 1) / 2.
        let sampleX = (xStart..<xEnd).map { x in sourceCoordinate(pixel: x, from: box.x0, to: box.x1, size: m) }
        for y in yStart..<yEnd {
            let iy = sourceCoordinate(pixel: y, from: box.y0, to: box.y1, size: m)
            for (k, ix) in sampleX.enumerated() {
                let v = bilinearZeroPadded(mask, size: m, x: ix, y: iy)
                out[y * imageWidth + xStart + k] = v >= threshold ? 1 : 0
            }
        }
        return out
    }
}

/// The mask coordinate grid_sample reads for image pixel `pixel`: its centre normalised to the box
/// ((p + 0.5 - lo) / (hi - lo) * 2 - 1, float32 as detectron2), then unnormalised as align_corners=False.
private func sourceCoordinate(pixel: Int, from lo: Float, to hi: Float, size: Int) -> Float {
    let g = (Float(pixel) + 0.5 - lo) / (hi - lo) * 2 - 1
    return ((g + 1) * Float(size) - 1) / 2
}

/// torch's bilinear `grid_sample` of one (M, M) plane at (x, y) with zeros padding: each corner
/// outside the plane contributes 0.
private func bilinearZeroPadded(_ plane: UnsafePointer<Float>, size m: Int, x: Float, y: Float) -> Float {
    guard x.isFinite && y.isFinite else { return 0 }
    let xw = x.rounded(.down), yn = y.rounded(.down)
    guard xw > -2 && yn > -2 && xw < Float(m) && yn < Float(m) else { return 0 }
    let x0 = Int(xw), y0 = Int(yn)
    let wE = x - xw, wW = 1 - wE, wS = y - yn, wN = 1 - wS
    func at(_ yy: Int, _ xx: Int) -> Float { yy >= 0 && yy < m && xx >= 0 && xx < m ? plane[yy * m + xx] : 0 }
    return at(y0, x0) * wW * wN + at(y0, x0 + 1) * wE * wN + at(y0 + 1, x0) * wW * wS + at(y0 + 1, x0 + 1) * wE * wS
}
