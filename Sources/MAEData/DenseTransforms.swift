import Foundation
import MAEKernels

/// An image with its dense targets, which the joint transforms keep aligned: instance boxes, labels
/// and masks, and a per-pixel class map.
public struct DenseSample: Sendable, Equatable {
    public var image: RGBImage
    /// One [x, y, w, h] box per instance, in pixels (COCO's convention).
    public var boxes: [[Double]]
    /// One class index per instance.
    public var labels: [Int]
    /// One (H, W) row-major 0/1 mask per instance, or none at all.
    public var masks: [[UInt8]]
    /// Per-pixel classes (H, W), if the sample has them.
    public var classMap: LabelMap?

    public var width: Int { image.width }
    public var height: Int { image.height }

    public init(image: RGBImage, boxes: [[Double]], labels: [Int], masks: [[UInt8]] = [], classMap: LabelMap? = nil) {
        precondition(boxes.count == labels.count && boxes.allSatisfy { $0.count == 4 }, "one [x, y, w, h] box per label")
        precondition(masks.isEmpty || (masks.count == boxes.count && masks.allSatisfy { $0.count == image.width * image.height }),
                     "one image-sized mask per instance")
        precondition(classMap.map { $0.width == image.width && $0.height == image.height } ?? true, "class map not image-sized")
        self.image = image; self.boxes = boxes; self.labels = labels; self.masks = masks; self.classMap = classMap
    }

    /// Resizes to `outWidth` x `outHeight`: the image with Pillow's bilinear or bicubic filter, masks
    /// and class map with Pillow's NEAREST, boxes scaled by the size ratios (detectron2's ResizeTransform).
    public func resized(width outWidth: Int, height outHeight: Int, interpolation: PILInterpolation = .bilinear) -> DenseSample {
        precondition(outWidth > 0 && outHeight > 0, "resize to an empty image")
        let pixels: [UInt8]
        switch interpolation {
        case .nearest:
            pixels = nearestResized(image.pixels, width: width, height: height, channels: 3, outWidth: outWidth, outHeight: outHeight)
        case .bilinear, .bicubic:
            pixels = outWidth == width && outHeight == height ? image.pixels
                : PILResample.resize(image.pixels, width: width, height: height, channels: 3, outWidth: outWidth,
                                     outHeight: outHeight, filter: interpolation == .bilinear ? .bilinear : .bicubic)
        }
        let sx = Double(outWidth) / Double(width), sy = Double(outHeight) / Double(height)
        return DenseSample(
            image: RGBImage(width: outWidth, height: outHeight, pixels: pixels),
            boxes: boxes.map { [$0[0] * sx, $0[1] * sy, $0[2] * sx, $0[3] * sy] },
            labels: labels,
            masks: masks.map { nearestResized($0, width: width, height: height, channels: 1, outWidth: outWidth, outHeight: outHeight) },
            classMap: classMap.map {
                LabelMap(width: outWidth, height: outHeight,
                         labels: nearestResized($0.labels, width: width, height: height, channels: 1,
                                                outWidth: outWidth, outHeight: outHeight))
            })
    }

    /// Mirrors left-right: box x becomes W - x - w.
    public func flippedHorizontally() -> DenseSample {
        func flip<T>(_ plane: [T]) -> [T] {
            var out = plane
            for y in 0..<height { for x in 0..<width { out[y * width + width - 1 - x] = plane[y * width + x] } }
            return out
        }
        return DenseSample(image: image.flippedHorizontally(),
                           boxes: boxes.map { [Double(width) - $0[0] - $0[2], $0[1], $0[2], $0[3]] },
                           labels: labels, masks: masks.map(flip),
                           classMap: classMap.map { LabelMap(width: width, height: height, labels: flip($0.labels)) })
    }

    /// The `height` x `width` window at (`top`, `left`), which may reach past the image: outside it the
    /// image gets `fill`, masks 0 and the class map `ignoreIndex`. Boxes are shifted and clipped to the
    /// window; instances whose box is empty (side <= 1e-5, detectron2's threshold) or whose mask is empty
    /// are dropped.
    public func window(top: Int, left: Int, height h: Int, width w: Int, fill: RGBColor = .imageNetMean,
                       ignoreIndex: Int32 = SegmentationDataset.ignoreIndex) -> DenseSample {
        func place<T>(_ plane: [T], channels: Int, background: [T]) -> [T] {
            var out = [T]((0..<(w * h)).flatMap { _ in background })
            for y in 0..<h {
                let sy = y + top
                guard sy >= 0 && sy < height else { continue }
                for x in 0..<w {
                    let sx = x + left
                    guard sx >= 0 && sx < width else { continue }
                    for c in 0..<channels { out[(y * w + x) * channels + c] = plane[(sy * width + sx) * channels + c] }
                }
            }
            return out
        }
        let image = RGBImage(width: w, height: h, pixels: place(self.image.pixels, channels: 3, background: [fill.r, fill.g, fill.b]))
        let map = classMap.map { LabelMap(width: w, height: h, labels: place($0.labels, channels: 1, background: [ignoreIndex])) }
        var out = DenseSample(image: image, boxes: [], labels: [], masks: [], classMap: map)
        for k in boxes.indices {
            let b = boxes[k]
            let x0 = min(max(b[0] - Double(left), 0), Double(w)), x1 = min(max(b[0] + b[2] - Double(left), 0), Double(w))
            let y0 = min(max(b[1] - Double(top), 0), Double(h)), y1 = min(max(b[1] + b[3] - Double(top), 0), Double(h))
            guard x1 - x0 > 1e-5, y1 - y0 > 1e-5 else { continue }
            if !masks.isEmpty {
                let mask = place(masks[k], channels: 1, background: [UInt8(0)])
                guard mask.contains(where: { $0 != 0 }) else { continue }
                out.masks.append(mask)
            }
            out.boxes.append([x0, y0, x1 - x0, y1 - y0])
            out.labels.append(labels[k])
        }
        return out
    }
}

/// Pillow's NEAREST resize (ImagingScaleAffine): source index int((i + 0.5) * in / out), accumulated
/// step by step in double as Pillow does. `plane` is (H, W, channels).
func nearestResized<T>(_ plane: [T], width: Int, height: Int, channels: Int, outWidth: Int, outHeight: Int) -> [T] {
    func indices(_ inSize: Int, _ outSize: Int) -> [Int] {
        let step = Double(inSize) / Double(outSize)
        var position = step * 0.5
        return (0..<outSize).map { _ in
            defer { position += step }
            return min(max(position < 0 ? -1 : Int(position), 0), inSize - 1)
        }
    }
    let xs = indices(width, outWidth), ys = indices(height, outHeight)
    var out: [T] = []
    out.reserveCapacity(outWidth * outHeight * channels)
    for y in ys {
        for x in xs {
            for c in 0..<channels { out.append(plane[(y * width + x) * channels + c]) }
        }
    }
    return out
}

/// Large-scale jitter as ViTDet trains with it (detectron2's RandomFlip, ResizeScale, FixedSizeCrop):
/// flip with `flipProbability`; resize by s * size / max(H, W) with s uniform in `scale` (sides
/// rounded half to even, as np.round); then a random `size` x `size` window, one uniform draw placing
/// it on both axes, padded at the bottom and right when the image is smaller.
public struct LargeScaleJitter: Sendable, Equatable {
    public var size: Int
    public var scale: ClosedRange<Double>
    public var flipProbability: Double
    public var interpolation: PILInterpolation
    /// Padding for the image; the ImageNet mean pixel normalises to about 0, like padding after
    /// normalisation.
    public var fill: RGBColor

    public init(size: Int, scale: ClosedRange<Double> = 0.1...2.0, flipProbability: Double = 0.5,
                interpolation: PILInterpolation = .bilinear, fill: RGBColor = .imageNetMean) {
        self.size = size; self.scale = scale; self.flipProbability = flipProbability
        self.interpolation = interpolation; self.fill = fill
    }

    /// The resized (width, height) for a drawn scale factor `s` (ResizeScale.get_transform).
    public func resizedSize(width: Int, height: Int, s: Double) -> (width: Int, height: Int) {
        let target = Double(size) * s
        let factor = min(target / Double(height), target / Double(width))
        return (max(1, Int((Double(width) * factor).rounded(.toNearestOrEven))),
                max(1, Int((Double(height) * factor).rounded(.toNearestOrEven))))
    }

    public func apply(_ sample: DenseSample, rng: inout RandomStream) -> DenseSample {
        applyReportingExtent(sample, rng: &rng).sample
    }

    /// `apply`, also giving the part of the `size` x `size` window the resized image covers (its top-left
    /// `height` x `width`; the rest is padding, which detectron2 leaves out of the crop and pads with 0
    /// after normalisation).
    public func applyReportingExtent(_ sample: DenseSample, rng: inout RandomStream) -> (sample: DenseSample, height: Int, width: Int) {
        var out = rng.chance(flipProbability) ? sample.flippedHorizontally() : sample
        let (w, h) = resizedSize(width: out.width, height: out.height, s: rng.uniform(scale.lowerBound, scale.upperBound))
        out = out.resized(width: w, height: h, interpolation: interpolation)
        let u = rng.unit()
        let top = Int((Double(max(0, h - size)) * u).rounded(.toNearestOrEven))
        let left = Int((Double(max(0, w - size)) * u).rounded(.toNearestOrEven))
        return (out.window(top: top, left: left, height: size, width: size, fill: fill), min(size, h - top), min(size, w - left))
    }
}
