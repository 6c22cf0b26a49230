import Foundation
import MAEKernels

/// A per-sample step on the normalised float image, after ToTensor + Normalize (where timm puts
/// random erasing). `image` is (C, H, W).
public protocol TensorTransform: Sendable {
    func apply(_ image: UnsafeMutableBufferPointer<Float>, channels: Int, height: Int, width: Int,
               rng: inout RandomStream)
}

/// timm's RandomErasing on one normalised (C, H, W) image: with `probability`, `count` boxes whose
/// area is a uniform fraction in `area` of the image (divided by the count) and whose aspect ratio is
/// log-uniform in `aspect`, ten tries each to fit strictly inside; the box gets per-pixel standard
/// normal noise ('pixel'), one normal value per channel ('rand') or zeros ('const').
public struct RandomErasing: TensorTransform, Equatable {
    public enum Mode: String, Sendable { case pixel, rand, const }

    public var probability: Double
    public var area: ClosedRange<Double>
    public var aspect: ClosedRange<Double>
    public var mode: Mode
    /// Boxes per image: `minCount` when equal to `maxCount`, otherwise uniform in between.
    public var minCount: Int
    public var maxCount: Int

    /// MAE fine-tuning's settings: `re_prob 0.25, re_mode 'pixel', re_count 1`.
    public init(probability: Double = 0.25, area: ClosedRange<Double> = 0.02...(1.0 / 3),
                aspect: ClosedRange<Double> = 0.3...(1 / 0.3), mode: Mode = .pixel, minCount: Int = 1, maxCount: Int = 1) {
        self.probability = probability; self.area = area; self.aspect = aspect; self.mode = mode
        self.minCount = minCount; self.maxCount = max(minCount, maxCount)
    }

    /// The boxes (top, left, height, width) one image gets, in timm's order of draws.
    public func boxes(height: Int, width: Int, rng: inout RandomStream) -> [(top: Int, left: Int, height: Int, width: Int)] {
        if rng.unit() > probability { return [] }
        let count = minCount == maxCount ? minCount : rng.integer(minCount, maxCount)
        let logLo = log(aspect.lowerBound), logHi = log(aspect.upperBound)
        var out: [(top: Int, left: Int, height: Int, width: Int)] = []
        for _ in 0..<count {
            for _ in 0..<10 {
                let target = rng.uniform(area.lowerBound, area.upperBound) * Double(height * width) / Double(count)
                let ratio = exp(rng.uniform(logLo, logHi))
                let h = Int((target * ratio).squareRoot().rounded(.toNearestOrEven))
                let w = Int((target / ratio).squareRoot().rounded(.toNearestOrEven))
                if w < width && h < height {
                    out.append((rng.integer(0, height - h), rng.integer(0, width - w), h, w))
                    break
                }
            }
        }
        return out
    }

    public func apply(_ image: UnsafeMutableBufferPointer<Float>, channels: Int, height: Int, width: Int,
                      rng: inout RandomStream) {
        precondition(image.count == channels * height * width, "image is not (C, H, W)")
        for box in boxes(height: height, width: width, rng: &rng) {
            // Drawn as timm does: one (C, h, w) tensor, or one value per channel.
            let perChannel = (0..<channels).map { _ in mode == .rand ? Float(rng.normal()) : 0 }
            for c in 0..<channels {
                for y in box.top..<(box.top + box.height) {
                    for x in box.left..<(box.left + box.width) {
                        image[(c * height + y) * width + x] = mode == .pixel ? Float(rng.normal()) : perChannel[c]
                    }
                }
            }
        }
    }
}

/// The rows a shard's rows are mixed with: (B, C, H, W) images and their labels.
public struct MixPartners: Sendable, Equatable {
    public var images: [Float]
    public var labels: [Int]
    public init(images: [Float], labels: [Int]) { self.images = images; self.labels = labels }
}

/// timm's Mixup in batch mode, with CutMix: one lambda per batch; with `probability` the batch is
/// mixed, by CutMix with `switchProbability` (lambda ~ Beta(cutmixAlpha, cutmixAlpha), a box from
/// `rand_bbox`, lambda corrected to the box's clipped area) or else Mixup (lambda ~ Beta(mixupAlpha,
/// mixupAlpha)), always with the batch reversed. Targets are label-smoothed one-hots (off =
/// smoothing / K, on = 1 - smoothing + off) mixed the same way.
public struct Mixup: Sendable, Equatable {
    public var mixupAlpha: Double
    public var cutmixAlpha: Double
    public var probability: Double
    public var switchProbability: Double
    public var labelSmoothing: Double
    public var classes: Int

    /// MAE fine-tuning's settings: mixup 0.8, cutmix 1.0, prob 1, switch 0.5, smoothing 0.1.
    public init(classes: Int, mixupAlpha: Double = 0.8, cutmixAlpha: Double = 1.0, probability: Double = 1.0,
                switchProbability: Double = 0.5, labelSmoothing: Double = 0.1) {
        self.classes = classes; self.mixupAlpha = mixupAlpha; self.cutmixAlpha = cutmixAlpha
        self.probability = probability; self.switchProbability = switchProbability; self.labelSmoothing = labelSmoothing
    }

    /// What one batch gets: the drawn lambda, and for CutMix the box centre.
    public struct Draw: Sendable, Equatable {
        public var lambda: Double
        /// The CutMix box centre (row, column); nil for Mixup (or no mixing when lambda is 1).
        public var cutmixCenter: (y: Int, x: Int)?
        public init(lambda: Double, cutmixCenter: (y: Int, x: Int)?) { self.lambda = lambda; self.cutmixCenter = cutmixCenter }
        public static func == (a: Draw, b: Draw) -> Bool {
            a.lambda == b.lambda && a.cutmixCenter?.y == b.cutmixCenter?.y && a.cutmixCenter?.x == b.cutmixCenter?.x
        }
    }

    /// `_params_per_batch` then `rand_bbox`'s centre, in timm's order of draws.
    public func draw(height: Int, width: Int, rng: inout RandomStream) -> Draw {
        guard rng.unit() < probability else { return Draw(lambda: 1, cutmixCenter: nil) }
        var cutmix = false
        let lambda: Double
        if mixupAlpha > 0 && cutmixAlpha > 0 {
            cutmix = rng.unit() < switchProbability
            lambda = cutmix ? rng.beta(cutmixAlpha, cutmixAlpha) : rng.beta(mixupAlpha, mixupAlpha)
        } else if mixupAlpha > 0 {
            lambda = rng.beta(mixupAlpha, mixupAlpha)
        } else {
            cutmix = true
            lambda = rng.beta(cutmixAlpha, cutmixAlpha)
        }
        return Draw(lambda: lambda, cutmixCenter: cutmix ? (rng.below(height), rng.below(width)) : nil)
    }

    /// timm's `rand_bbox` for a centre, and the lambda corrected to the clipped box's area:
    /// rows yl..<yh, columns xl..<xh.
    public static func cutmixBox(height: Int, width: Int, lambda: Double, center: (y: Int, x: Int))
        -> (yl: Int, yh: Int, xl: Int, xh: Int, lambda: Double) {
        let ratio = (1 - lambda).squareRoot()
        let cutH = Int(Double(height) * ratio), cutW = Int(Double(width) * ratio)
        let yl = min(max(center.y - cutH / 2, 0), height), yh = min(max(center.y + (cutH + 1) / 2, 0), height)
        let xl = min(max(center.x - cutW / 2, 0), width), xh = min(max(center.x + (cutW + 1) / 2, 0), width)
        let corrected = 1 - Double((yh - yl) * (xh - xl)) / Double(height * width)
        return (yl, yh, xl, xh, corrected)
    }

    /// Mixes `images` (B, C, H, W) in place with `draw` and returns the soft targets (B, K) and the
    /// lambda they use. Arithmetic in float32 as torch does it. Row i is mixed with row i of
    /// `partners`; nil: with row B - 1 - i of the batch (timm's `flip(0)`). A rank's shard of a
    /// global batch passes the rows its own rows meet in the flipped global batch (`Batch.partners`).
    public func mix(_ images: inout [Float], labels: [Int], partners: MixPartners? = nil, channels: Int, height: Int,
                    width: Int, draw: Draw) -> (targets: [Float], lambda: Double) {
        let b = labels.count, plane = channels * height * width
        precondition(images.count == b * plane, "images are not (B, C, H, W) for \(b) labels")
        precondition(partners.map { $0.labels.count == b && $0.images.count == b * plane } ?? true, "one partner per row")
        var lambda = draw.lambda
        if lambda != 1 {
            let original = images
            let source = partners?.images ?? original
            let partner = { (i: Int) in partners == nil ? b - 1 - i : i }
            if let center = draw.cutmixCenter {
                let box = Mixup.cutmixBox(height: height, width: width, lambda: lambda, center: center)
                lambda = box.lambda
                for i in 0..<b {
                    let j = partner(i)
                    for c in 0..<channels {
                        for y in box.yl..<box.yh {
                            for x in box.xl..<box.xh {
                                let o = (c * height + y) * width + x
                                images[i * plane + o] = source[j * plane + o]
                            }
                        }
                    }
                }
            } else {
                let l = Float(lambda), r = Float(1 - lambda)
                for i in 0..<b {
                    let j = partner(i)
                    for o in 0..<plane {
                        let kept = original[i * plane + o] * l
                        let mixedIn = source[j * plane + o] * r
                        images[i * plane + o] = kept + mixedIn
                    }
                }
            }
        }
        return (targets(labels: labels, partnerLabels: partners?.labels, lambda: lambda), lambda)
    }

    /// timm's `mixup_target`: smoothed one-hots y1 and their reversal y2 (or `partnerLabels`'
    /// one-hots), lambda * y1 + (1 - lambda) * y2.
    public func targets(labels: [Int], partnerLabels: [Int]? = nil, lambda: Double) -> [Float] {
        let off = labelSmoothing / Double(classes)
        let offValue = Float(off), onValue = Float(1 - labelSmoothing + off)
        let b = labels.count
        var out = [Float](repeating: 0, count: b * classes)
        let l = Float(lambda), r = Float(1 - lambda)
        for i in 0..<b {
            let y2Label = partnerLabels?[i] ?? labels[b - 1 - i]
            for k in 0..<classes {
                let y1 = labels[i] == k ? onValue : offValue
                let y2 = y2Label == k ? onValue : offValue
                out[i * classes + k] = y1 * l + y2 * r
            }
        }
        return out
    }

    /// Draws and mixes one loader batch of square images; returns the soft targets (B, K).
    public func callAsFunction(_ batch: inout Batch, rng: inout RandomStream) -> [Float] {
        let side = Int(Double(batch.images.count / max(1, 3 * batch.count)).squareRoot())
        let d = draw(height: side, width: side, rng: &rng)
        return mix(&batch.images, labels: batch.labels, channels: 3, height: side, width: side, draw: d).targets
    }
}
