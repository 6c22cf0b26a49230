import Foundation
import MAEData
import MAEKernels

// Semantic-segmentation data as mmseg prepares it (mmseg/datasets/transforms, ade20k.py):
// training RandomResize -> RandomCrop (cat_max_ratio) -> RandomFlip -> PhotoMetricDistortion ->
// normalise -> pad to the crop (image 0 after normalisation, labels 255); testing a keep-ratio resize.
// Images are RGB uint8 (H, W, 3); label maps Int32 (H, W), 255 ignored.

/// mmseg's resize and crop settings for one dataset (ADE20K: scale (2048, 512), crop 512).
public struct SegmentationPipeline: Sendable, Equatable {
    /// The (long, short) scale RandomResize and the test Resize aim for.
    public var scale: (long: Int, short: Int)
    /// RandomResize's ratio range (mmseg 0.5-2.0).
    public var ratioRange: ClosedRange<Double>
    /// The square training crop and sliding-window side.
    public var crop: Int
    /// RandomCrop's cat_max_ratio: no class may cover this share of a crop (up to 10 retries).
    public var catMaxRatio: Double
    public var flipProbability: Double

    public init(scale: (long: Int, short: Int), ratioRange: ClosedRange<Double> = 0.5...2.0, crop: Int,
                catMaxRatio: Double = 0.75, flipProbability: Double = 0.5) {
        self.scale = scale; self.ratioRange = ratioRange; self.crop = crop
        self.catMaxRatio = catMaxRatio; self.flipProbability = flipProbability
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.scale == b.scale && a.ratioRange == b.ratioRange && a.crop == b.crop && a.catMaxRatio == b.catMaxRatio
            && a.flipProbability == b.flipProbability
    }

    /// mmcv's imrescale size: factor min(long / max(h, w), short / min(h, w)), sides int(x * factor + 0.5).
    public static func rescaledSize(width: Int, height: Int, long: Int, short: Int) -> (width: Int, height: Int) {
        let factor = min(Double(long) / Double(max(height, width)), Double(short) / Double(min(height, width)))
        return (Int(Double(width) * factor + 0.5), Int(Double(height) * factor + 0.5))
    }

    /// One training sample: RandomResize (ratio uniform in the range, scale x ratio as int), RandomCrop
    /// with cat_max_ratio, flip, PhotoMetricDistortion; then normalised into `out` (3, crop, crop) with
    /// the padding 0, and the (crop, crop) labels padded with 255.
    public func train(image: RGBImage, labels: LabelMap, rng: inout RandomStream,
                      into out: UnsafeMutablePointer<Float>) -> [Int32] {
        let ratio = rng.uniform(ratioRange.lowerBound, ratioRange.upperBound)
        let (w, h) = Self.rescaledSize(width: image.width, height: image.height,
                                       long: Int(Double(scale.long) * ratio), short: Int(Double(scale.short) * ratio))
        var img = resizeBilinearUInt8(image, width: w, height: h)
        var map = resizeNearestCV(labels, width: w, height: h)
        let (top, left) = cropOrigin(map, rng: &rng)
        let ch = min(crop, h), cw = min(crop, w)
        img = cropImage(img, top: top, left: left, height: ch, width: cw)
        map = cropLabels(map, top: top, left: left, height: ch, width: cw)
        if rng.chance(flipProbability) {
            img = img.flippedHorizontally()
            map = flipLabels(map)
        }
        img = PhotoMetricDistortion().apply(img, rng: &rng)
        return normalizePadded(img, labels: map, side: crop, into: out)
    }

    /// RandomCrop's offsets: drawn as np.random.randint(0, margin + 1) per axis; with cat_max_ratio < 1
    /// redrawn up to 10 times until the crop holds more than one class and none above the ratio
    /// (ignored pixels not counted); the last draw stands.
    func cropOrigin(_ map: LabelMap, rng: inout RandomStream) -> (top: Int, left: Int) {
        func draw() -> (Int, Int) {
            (rng.below(max(map.height - crop, 0) + 1), rng.below(max(map.width - crop, 0) + 1))
        }
        var origin = draw()
        guard catMaxRatio < 1 else { return origin }
        for _ in 0..<10 {
            var counts: [Int32: Int] = [:]
            for y in origin.0..<min(origin.0 + crop, map.height) {
                for x in origin.1..<min(origin.1 + crop, map.width) {
                    let v = map.labels[y * map.width + x]
                    if v != SegmentationDataset.ignoreIndex { counts[v, default: 0] += 1 }
                }
            }
            let total = counts.values.reduce(0, +)
            if counts.count > 1, Double(counts.values.max()!) / Double(total) < catMaxRatio { break }
            origin = draw()
        }
        return origin
    }
}

/// mmseg's PhotoMetricDistortion (brightness delta 32, contrast 0.5-1.5, saturation 0.5-1.5, hue
/// delta 18), each applied with probability 0.5 in mmseg's order: brightness; a coin for whether
/// contrast comes first (mode 1) or last (mode 0); saturation and hue in HSV (OpenCV's uint8 HSV:
/// H in 0..<180, S and V in 0...255); every step clips to 0...255 and truncates to uint8.
public struct PhotoMetricDistortion: Sendable {
    public var brightnessDelta = 32.0
    public var contrast = 0.5...1.5
    public var saturation = 0.5...1.5
    public var hueDelta = 18

    public init() {}

    public func apply(_ image: RGBImage, rng: inout RandomStream) -> RGBImage {
        var px = image.pixels.map(Float.init)
        func convert(_ values: inout [Float], alpha: Float = 1, beta: Float = 0, stride: Int = 1, offset: Int = 0) {
            var i = offset
            while i < values.count {
                values[i] = Float(UInt8(min(max(values[i] * alpha + beta, 0), 255)))
                i += stride
            }
        }
        if rng.below(2) == 1 { convert(&px, beta: Float(rng.uniform(-brightnessDelta, brightnessDelta))) }
        let contrastFirst = rng.below(2) == 1
        func contrastStep() {
            if rng.below(2) == 1 { convert(&px, alpha: Float(rng.uniform(contrast.lowerBound, contrast.upperBound))) }
        }
        if contrastFirst { contrastStep() }
        if rng.below(2) == 1 {
            var hsv = rgbToHSV(px)
            convert(&hsv, alpha: Float(rng.uniform(saturation.lowerBound, saturation.upperBound)), stride: 3, offset: 1)
            px = hsvToRGB(hsv)
        }
        if rng.below(2) == 1 {
            var hsv = rgbToHSV(px)
            let delta = Float(rng.integer(-hueDelta, hueDelta - 1))   // np.random.randint(-18, 18): high exclusive
            for i in stride(from: 0, to: hsv.count, by: 3) { hsv[i] = (hsv[i] + delta + 180).truncatingRemainder(dividingBy: 180) }
            px = hsvToRGB(hsv)
        }
        if !contrastFirst { contrastStep() }
        return RGBImage(width: image.width, height: image.height, pixels: px.map { UInt8($0) })
    }
}

/// OpenCV's RGB -> HSV for uint8 images, in float with OpenCV's rounding: V = max, S = round(255 (V - min) / V),
/// H = round(h / 2) with h in degrees (0..<180).
func rgbToHSV(_ rgb: [Float]) -> [Float] {
    var out = rgb
    for i in stride(from: 0, to: rgb.count, by: 3) {
        let r = rgb[i], g = rgb[i + 1], b = rgb[i + 2]
        let v = max(r, g, b), mn = min(r, g, b), diff = v - mn
        let s: Float = v == 0 ? 0 : (255 * diff / v).rounded()
        var h: Float = 0
        if diff > 0 {
            if v == r { h = 60 * (g - b) / diff } else if v == g { h = 120 + 60 * (b - r) / diff } else { h = 240 + 60 * (r - g) / diff }
            if h < 0 { h += 360 }
        }
        var hh = (h / 2).rounded()
        if hh >= 180 { hh -= 180 }
        out[i] = hh; out[i + 1] = s; out[i + 2] = v
    }
    return out
}

/// OpenCV's HSV -> RGB for uint8 (H in 0..<180), rounded to whole values.
func hsvToRGB(_ hsv: [Float]) -> [Float] {
    var out = hsv
    for i in stride(from: 0, to: hsv.count, by: 3) {
        let h = hsv[i] * 2 / 60, s = hsv[i + 1] / 255, v = hsv[i + 2]
        let sector = Int(h.rounded(.down)) % 6, f = h - h.rounded(.down)
        let p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f))
        let (r, g, b): (Float, Float, Float)
        switch sector {
        case 0: (r, g, b) = (v, t, p)
        case 1: (r, g, b) = (q, v, p)
        case 2: (r, g, b) = (p, v, t)
        case 3: (r, g, b) = (p, q, v)
        case 4: (r, g, b) = (t, p, v)
        default: (r, g, b) = (v, p, q)
        }
        out[i] = min(max(r.rounded(), 0), 255); out[i + 1] = min(max(g.rounded(), 0), 255); out[i + 2] = min(max(b.rounded(), 0), 255)
    }
    return out
}

/// cv2 INTER_LINEAR as torch's bilinear (align_corners false, no antialiasing), rounded to uint8.
func resizeBilinearUInt8(_ image: RGBImage, width w: Int, height h: Int) -> RGBImage {
    guard w != image.width || h != image.height else { return image }
    let planes = Tensor([1, 3, image.height, image.width]), out = Tensor([1, 3, h, w])
    let n = image.width * image.height
    for i in 0..<n { for c in 0..<3 { planes[c * n + i] = Float(image.pixels[3 * i + c]) } }
    resizeBilinearForward(out: out.data, input: planes.data,
                          size: Resample2dSize(batch: 1, channels: 3, height: image.height, width: image.width,
                                               outHeight: h, outWidth: w), alignCorners: false)
    var pixels = [UInt8](repeating: 0, count: w * h * 3)
    for i in 0..<(w * h) { for c in 0..<3 { pixels[3 * i + c] = UInt8(min(max(out[c * w * h + i].rounded(), 0), 255)) } }
    return RGBImage(width: w, height: h, pixels: pixels)
}

/// cv2 INTER_NEAREST (mmcv's label resize): source index floor(i * in / out), clamped.
func resizeNearestCV(_ map: LabelMap, width w: Int, height h: Int) -> LabelMap {
    guard w != map.width || h != map.height else { return map }
    let xs = (0..<w).map { min(Int(Double($0) * Double(map.width) / Double(w)), map.width - 1) }
    let ys = (0..<h).map { min(Int(Double($0) * Double(map.height) / Double(h)), map.height - 1) }
    var labels = [Int32](repeating: 0, count: w * h)
    for y in 0..<h { for x in 0..<w { labels[y * w + x] = map.labels[ys[y] * map.width + xs[x]] } }
    return LabelMap(width: w, height: h, labels: labels)
}

func cropImage(_ image: RGBImage, top: Int, left: Int, height h: Int, width w: Int) -> RGBImage {
    var pixels = [UInt8](repeating: 0, count: w * h * 3)
    for y in 0..<h {
        for x in 0..<(w * 3) { pixels[y * w * 3 + x] = image.pixels[((top + y) * image.width + left) * 3 + x] }
    }
    return RGBImage(width: w, height: h, pixels: pixels)
}

func cropLabels(_ map: LabelMap, top: Int, left: Int, height h: Int, width w: Int) -> LabelMap {
    var labels = [Int32](repeating: 0, count: w * h)
    for y in 0..<h { for x in 0..<w { labels[y * w + x] = map.labels[(top + y) * map.width + left + x] } }
    return LabelMap(width: w, height: h, labels: labels)
}

func flipLabels(_ map: LabelMap) -> LabelMap {
    var labels = map.labels
    for y in 0..<map.height { for x in 0..<map.width { labels[y * map.width + map.width - 1 - x] = map.labels[y * map.width + x] } }
    return LabelMap(width: map.width, height: map.height, labels: labels)
}

/// Normalises `image` (at most side x side) into out (3, side, side) with 0 in the padding (mmseg pads
/// after normalising), and returns the labels padded with 255 at the bottom and right.
func normalizePadded(_ image: RGBImage, labels: LabelMap, side: Int, into out: UnsafeMutablePointer<Float>) -> [Int32] {
    let plane = side * side
    out.initialize(repeating: 0, count: 3 * plane)
    var padded = [Int32](repeating: SegmentationDataset.ignoreIndex, count: plane)
    for y in 0..<image.height {
        for x in 0..<image.width {
            let i = y * image.width + x
            for c in 0..<3 {
                out[c * plane + y * side + x] = (Float(image.pixels[3 * i + c]) / 255 - ImageNetStats.mean[c]) / ImageNetStats.std[c]
            }
            padded[y * side + x] = labels.labels[i]
        }
    }
    return padded
}

/// A segmentation dataset's training samples through mmseg's pipeline, for the shared `DataLoader`.
public struct SegmentationTrainSource: DenseSampleSource {
    public let dataset: SegmentationDataset
    public let pipeline: SegmentationPipeline

    public init(dataset: SegmentationDataset, pipeline: SegmentationPipeline) {
        self.dataset = dataset; self.pipeline = pipeline
    }

    public var count: Int { dataset.count }
    public var size: Int { pipeline.crop }
    public func label(_ index: Int) -> Int { 0 }
    public func image(_ index: Int) throws -> RGBImage { try dataset.sample(index).image }

    public func denseSample(_ index: Int, rng: inout RandomStream, image: UnsafeMutablePointer<Float>) throws -> [Int32] {
        let (img, labels) = try dataset.sample(index)
        return pipeline.train(image: img, labels: labels, rng: &rng, into: image)
    }
}

/// Where a segmentation task's images and label maps are.
public enum SegmentationData {
    /// ADE20K's layout under `root`: images/{training,validation} and annotations/{training,validation}, by stem.
    public static func ade20k(root: URL, split: String, reduceZeroLabel: Bool) throws -> SegmentationDataset {
        try SegmentationDataset(imageFolder: root.appendingPathComponent("images/\(split)"),
                                labelFolder: root.appendingPathComponent("annotations/\(split)"),
                                reduceZeroLabel: reduceZeroLabel)
    }
}
