import Foundation
import MAEKernels

/// ImageNet statistics MAE normalises with.
public enum ImageNetStats {
    public static let mean: [Float] = [0.485, 0.456, 0.406]
    public static let std: [Float] = [0.229, 0.224, 0.225]
}

/// Geometric transforms on `RGBImage`, each matching torchvision on PIL images.
extension RGBImage {
    /// PIL bicubic resize to exactly `width` x `height` (`img.resize((w, h), Image.BICUBIC)`).
    public func resized(width outWidth: Int, height outHeight: Int) -> RGBImage {
        precondition(outWidth > 0 && outHeight > 0, "resize to an empty image")
        if outWidth == width && outHeight == height { return self }
        let out = PILResample.resize(pixels, width: width, height: height, channels: 3,
                                     outWidth: outWidth, outHeight: outHeight)
        return RGBImage(width: outWidth, height: outHeight, pixels: out)
    }

    /// torchvision `Resize(shortSide)`: the short side becomes `shortSide`, the long side
    /// `int(shortSide * long / short)`, bicubic.
    public func resized(shortSide: Int) -> RGBImage {
        let (w, h) = RGBImage.shortSideSize(width: width, height: height, shortSide: shortSide)
        return resized(width: w, height: h)
    }

    /// The (width, height) torchvision's `Resize(shortSide)` produces.
    public static func shortSideSize(width: Int, height: Int, shortSide: Int) -> (Int, Int) {
        let short = min(width, height), long = max(width, height)
        let newLong = Int(Double(shortSide) * Double(long) / Double(short))
        return width <= height ? (shortSide, newLong) : (newLong, shortSide)
    }

    /// The `height` x `width` window at (`top`, `left`); parts outside the image are black
    /// (PIL's `crop` semantics).
    public func cropped(top: Int, left: Int, height ch: Int, width cw: Int) -> RGBImage {
        var out = RGBImage(width: cw, height: ch)
        let x0 = max(0, -left), x1 = min(cw, width - left)
        guard x0 < x1 else { return out }
        pixels.withUnsafeBufferPointer { s in
            out.pixels.withUnsafeMutableBufferPointer { o in
                for y in 0..<ch {
                    let sy = y + top
                    guard sy >= 0 && sy < height else { continue }
                    let src = s.baseAddress! + (sy * width + left + x0) * 3
                    (o.baseAddress! + (y * cw + x0) * 3).update(from: src, count: (x1 - x0) * 3)
                }
            }
        }
        return out
    }

    /// torchvision `CenterCrop((height, width))`: top = int(round((H - h) / 2)), zero padding
    /// (split as torchvision does) when the crop is larger than the image.
    public func centerCropped(height ch: Int, width cw: Int) -> RGBImage {
        func offset(_ size: Int, _ crop: Int) -> Int {
            if crop > size { return -((crop - size) / 2) }
            return Int((Double(size - crop) / 2).rounded(.toNearestOrEven))
        }
        return cropped(top: offset(height, ch), left: offset(width, cw), height: ch, width: cw)
    }

    /// Mirror left-right.
    public func flippedHorizontally() -> RGBImage {
        var out = self
        for y in 0..<height {
            for x in 0..<width {
                let s = (y * width + x) * 3, d = (y * width + width - 1 - x) * 3
                out.pixels[d] = pixels[s]; out.pixels[d + 1] = pixels[s + 1]; out.pixels[d + 2] = pixels[s + 2]
            }
        }
        return out
    }

    /// `ToTensor()` then `Normalize(mean, std)`: (3, H, W) floats, (x / 255 - mean) / std,
    /// in float32 as torch computes it.
    public func normalizedCHW(mean: [Float] = ImageNetStats.mean, std: [Float] = ImageNetStats.std) -> [Float] {
        var out = [Float](repeating: 0, count: 3 * width * height)
        out.withUnsafeMutableBufferPointer { o in writeNormalizedCHW(into: o.baseAddress!, mean: mean, std: std) }
        return out
    }

    /// As `normalizedCHW`, written into `out` (3 * H * W floats).
    public func writeNormalizedCHW(into out: UnsafeMutablePointer<Float>,
                                   mean: [Float] = ImageNetStats.mean, std: [Float] = ImageNetStats.std) {
        let plane = width * height
        pixels.withUnsafeBufferPointer { p in
            for c in 0..<3 {
                let m = mean[c], s = std[c]
                let o = out + c * plane
                for i in 0..<plane { o[i] = (Float(p[3 * i + c]) / 255 - m) / s }
            }
        }
    }
}

/// MAE's evaluation transform: `Resize(int(size / cropRatio), bicubic)` then `CenterCrop(size)`.
/// With `cropRatio` 1 an image already at `size` x `size` passes through unchanged.
public func evalTransform(_ image: RGBImage, size: Int, cropRatio: Double = 0.875) -> RGBImage {
    let short = Int(Double(size) / cropRatio)
    return image.resized(shortSide: short).centerCropped(height: size, width: size)
}

/// torchvision's `RandomResizedCrop`: the crop box sampling and the bicubic crop-and-resize.
public struct RandomResizedCrop: Sendable {
    public var size: Int
    /// Range of the crop's area as a fraction of the image: MAE pretraining (0.2, 1), probes (0.08, 1).
    public var scale: ClosedRange<Double>
    /// Range of the crop's aspect ratio (width / height), sampled log-uniformly.
    public var ratio: ClosedRange<Double>

    public init(size: Int, scale: ClosedRange<Double> = 0.08...1, ratio: ClosedRange<Double> = (3.0 / 4)...(4.0 / 3)) {
        self.size = size
        self.scale = scale
        self.ratio = ratio
    }

    /// The crop box (top, left, height, width), by torchvision's `get_params`: ten tries at a
    /// random area and log-ratio that fits, then the central crop clamped to the ratio range.
    public func box(width: Int, height: Int, rng: inout RandomStream) -> (top: Int, left: Int, height: Int, width: Int) {
        let area = Double(width * height)
        let logLo = log(ratio.lowerBound), logHi = log(ratio.upperBound)
        for _ in 0..<10 {
            let target = area * rng.uniform(scale.lowerBound, scale.upperBound)
            let aspect = exp(rng.uniform(logLo, logHi))
            let w = Int((target * aspect).squareRoot().rounded(.toNearestOrEven))
            let h = Int((target / aspect).squareRoot().rounded(.toNearestOrEven))
            if w > 0 && w <= width && h > 0 && h <= height {
                let top = rng.below(height - h + 1), left = rng.below(width - w + 1)
                return (top, left, h, w)
            }
        }
        let inRatio = Double(width) / Double(height)
        var w = width, h = height
        if inRatio < ratio.lowerBound {
            h = Int((Double(w) / ratio.lowerBound).rounded(.toNearestOrEven))
        } else if inRatio > ratio.upperBound {
            w = Int((Double(h) * ratio.upperBound).rounded(.toNearestOrEven))
        }
        return ((height - h) / 2, (width - w) / 2, h, w)
    }

    /// Crops a random box and resizes it to `size` x `size` (bicubic).
    public func apply(_ image: RGBImage, rng: inout RandomStream) -> RGBImage {
        let b = box(width: image.width, height: image.height, rng: &rng)
        return image.cropped(top: b.top, left: b.left, height: b.height, width: b.width)
            .resized(width: size, height: size)
    }
}

/// A per-sample image transform: decoded image in, augmented image out, randomness from `rng`.
public protocol ImageTransform: Sendable {
    /// The side of the square images `apply` returns.
    var size: Int { get }
    func apply(_ image: RGBImage, rng: inout RandomStream) -> RGBImage
}

extension RandomResizedCrop: ImageTransform {}

/// The transform pipelines MAE's scripts use before ToTensor + Normalize.
public enum MAETransform: ImageTransform {
    /// Pretraining and linear probing: RandomResizedCrop(size, scale, bicubic) + RandomHorizontalFlip.
    case train(RandomResizedCrop)
    /// Evaluation: Resize(int(size / cropRatio)) + CenterCrop(size).
    case eval(size: Int, cropRatio: Double)
    /// Fine-tuning, as timm's `create_transform(is_training=True, ...)` in MAE's main_finetune:
    /// RandomResizedCrop(size, scale (0.08, 1), bicubic) + RandomHorizontalFlip + RandAugment (color
    /// jitter is off when RandAugment is on). Random erasing follows normalisation: give the loader
    /// a `RandomErasing` as its tensor transform.
    case finetune(RandomResizedCrop, randAugment: RandAugment?)

    public func apply(_ image: RGBImage, rng: inout RandomStream) -> RGBImage {
        switch self {
        case .train(let crop):
            let out = crop.apply(image, rng: &rng)
            return rng.chance(0.5) ? out.flippedHorizontally() : out
        case .finetune(let crop, let randAugment):
            var out = crop.apply(image, rng: &rng)
            if rng.chance(0.5) { out = out.flippedHorizontally() }
            return randAugment?.apply(out, rng: &rng) ?? out
        case .eval(let size, let ratio):
            return evalTransform(image, size: size, cropRatio: ratio)
        }
    }

    /// The output side length.
    public var size: Int {
        switch self {
        case .train(let crop), .finetune(let crop, _): return crop.size
        case .eval(let size, _): return size
        }
    }
}
