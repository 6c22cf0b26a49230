import Foundation
import MAEData
import MAEDense
import MAEDistributed
import MAEFormats
import MAEJSON
import MAEKernels
import MAEMetrics
import MAEModels

/// How a segmenter is run on a val image (mmseg's test_cfg): 'whole' on the keep-ratio resized
/// image, or 'slide' over crop x crop windows at `stride`.
public struct SegmentationInference: Sendable {
    public var scale: (long: Int, short: Int)
    public var slide: Bool
    public var crop: Int
    public var stride: Int
    /// The backbone's patch: inputs are padded (bottom and right, 0 after normalising) to its multiples.
    public var patch: Int

    public init(scale: (long: Int, short: Int), slide: Bool, crop: Int, stride: Int, patch: Int) {
        self.scale = scale; self.slide = slide; self.crop = crop; self.stride = stride; self.patch = patch
    }

    /// mmseg's slide grid along one side: max(size - crop + stride - 1, 0) / stride + 1 windows, each
    /// [start, end) clamped into the image.
    public static func windows(size: Int, crop: Int, stride: Int) -> [Range<Int>] {
        let count = max(size - crop + stride - 1, 0) / stride + 1
        return (0..<count).map { i in
            let end = min(i * stride + crop, size)
            return max(end - crop, 0)..<end
        }
    }

    /// Predicted classes (H, W) of `image` in the model's label space: the test Resize (keep ratio),
    /// the model ('whole' or 'slide', logits averaged where windows overlap), logits bilinearly
    /// resized back to the image size, argmax.
    public func predict(_ model: Segmenter, image: RGBImage) throws -> [Int32] {
        let (w, h) = SegmentationPipeline.rescaledSize(width: image.width, height: image.height, long: scale.long, short: scale.short)
        let resized = resizeBilinearUInt8(image, width: w, height: h)
        let input = Tensor([1, 3, h, w])
        resized.writeNormalizedCHW(into: input.data)
        let k = model.classes
        var logits: Tensor
        if slide {
            logits = Tensor([1, k, h, w])
            var count = [Float](repeating: 0, count: h * w)
            for ys in Self.windows(size: h, crop: crop, stride: stride) {
                for xs in Self.windows(size: w, crop: crop, stride: stride) {
                    let window = cut(input, rows: ys, cols: xs)
                    let out = try run(model, window)
                    for c in 0..<k {
                        for y in ys { for x in xs { logits[(c * h + y) * w + x] += out[(c * ys.count + y - ys.lowerBound) * xs.count + x - xs.lowerBound] } }
                    }
                    for y in ys { for x in xs { count[y * w + x] += 1 } }
                }
            }
            for c in 0..<k { for i in 0..<(h * w) { logits[c * h * w + i] /= count[i] } }
        } else {
            logits = try run(model, input)
        }
        return argmaxClasses(resizeBilinear(logits, height: image.height, width: image.width))
    }

    /// The model's logits (1, K, h, w) for input (1, 3, h, w), padded to patch multiples and cropped back.
    func run(_ model: Segmenter, _ input: Tensor) throws -> Tensor {
        let h = input.shape[2], w = input.shape[3]
        let ph = (h + patch - 1) / patch * patch, pw = (w + patch - 1) / patch * patch
        try model.backbone.checkInput(height: ph, width: pw)
        let padded = ph == h && pw == w ? input : cut(input, rows: 0..<ph, cols: 0..<pw)
        let out = model.logits(images: padded.data, batch: 1, height: ph, width: pw)
        return ph == h && pw == w ? out : cut(out, rows: 0..<h, cols: 0..<w)
    }

    /// The window rows x cols of x (1, C, H, W); beyond x's edge it is 0.
    func cut(_ x: Tensor, rows: Range<Int>, cols: Range<Int>) -> Tensor {
        let c = x.shape[1], h = x.shape[2], w = x.shape[3]
        let out = Tensor([1, c, rows.count, cols.count])
        for ch in 0..<c {
            for (yi, y) in rows.enumerated() where y < h {
                for (xi, xx) in cols.enumerated() where xx < w {
                    out[(ch * rows.count + yi) * cols.count + xi] = x[(ch * h + y) * w + xx]
                }
            }
        }
        return out
    }
}

/// What evaluating a segmenter on a val set gives.
public struct SegmentationScore {
    public var result: SegmentationResult
    public var images: Int
    public var seconds: Double
}

/// Runs `model` on every image of `data`, writes `pred/STEM.png` (in the annotation's label space:
/// with reduce_zero_label class c is written c + 1) and, for the first `overlays` images,
/// `overlays/STEM.png` (image | prediction | ground truth, ignored pixels black), and scores the
/// predictions against the labels with mmseg's metrics; `per_image.json` holds each image's areas.
/// Under MPI the images are dealt to the ranks (image i to rank i mod N), each round's predictions
/// are gathered on every rank, every rank scores them in image order, and rank 0 alone writes: the
/// one-process files and numbers.
public func evaluateSegmenter(_ model: Segmenter, data: SegmentationDataset, inference: SegmentationInference,
                              numClasses: Int, into dir: URL, overlays: Int = 8, progress: ProgressLine? = nil,
                              world: World = Distributed.world) throws -> SegmentationScore {
    let start = Date()
    let writes = world.isMain
    let predDir = dir.appendingPathComponent("pred"), overlayDir = dir.appendingPathComponent("overlays")
    if writes {
        try prepareOutputFolder(predDir, flag: "the run's pred folder")
        if overlays > 0 { try prepareOutputFolder(overlayDir, flag: "the run's overlays folder") }
    }
    var metrics = SegmentationMetrics(numClasses: numClasses)
    var perImage: [SegmentationMetrics] = []
    for round in stride(from: 0, to: data.count, by: world.size) {
        let mine = round + world.rank
        let mySample = mine < data.count ? try data.sample(mine) : nil
        var myPrediction: [Int32] = []
        if let (image, _) = mySample {
            do { myPrediction = try inference.predict(model, image: image) } catch ModelError.shapeMismatch(let reason) {
                throw PathError(data.images[mine], "cannot be segmented: \(reason)")
            }
        }
        let predictions = try gatherValues(myPrediction, world: world, "gathering the segmentation predictions")
        for i in round..<min(round + world.size, data.count) {
            let (image, labels) = i == mine ? mySample! : try data.sample(i)
            let predicted = predictions[i - round]
            try metrics.add(prediction: predicted, groundTruth: labels.labels, name: data.images[i].path)
            var own = SegmentationMetrics(numClasses: numClasses)
            try own.add(prediction: predicted, groundTruth: labels.labels, name: data.images[i].path)
            perImage.append(own)
            guard writes else { continue }
            let stem = data.images[i].deletingPathExtension().lastPathComponent
            let written = data.reduceZeroLabel ? predicted.map { $0 + 1 } : predicted
            try LabelMapCodec.writePNG(LabelMap(width: image.width, height: image.height, labels: written),
                                       to: predDir.appendingPathComponent(stem + ".png"), durable: false)
            if i < overlays {
                try ImageCodec.writePNG(overlay(image, prediction: predicted, truth: labels.labels),
                                        to: overlayDir.appendingPathComponent(stem + ".png"), durable: false)
            }
            progress?.update("segmenting val", done: i + 1, total: data.count, unit: "images")
        }
    }
    if writes {
        try PerImageResults(segmentation: data.images.map { $0.deletingPathExtension().lastPathComponent }, areas: perImage).write(into: dir)
    }
    return SegmentationScore(result: metrics.compute(), images: data.count, seconds: elapsed(since: start))
}

/// A class's colour: well-spread hues (golden-ratio steps), class 255 (ignored) black.
func paletteColor(_ label: Int32) -> (UInt8, UInt8, UInt8) {
    guard label >= 0 && label != SegmentationDataset.ignoreIndex else { return (0, 0, 0) }
    let hue = (Double(label) * 0.618_033_988_75).truncatingRemainder(dividingBy: 1) * 360
    let rgb = hsvToRGB([Float(hue / 2), label % 2 == 0 ? 200 : 255, label % 3 == 0 ? 255 : 210])
    return (UInt8(rgb[0]), UInt8(rgb[1]), UInt8(rgb[2]))
}

/// image | prediction | ground truth side by side (W x 3 wide), the label maps in the palette.
func overlay(_ image: RGBImage, prediction: [Int32], truth: [Int32]) -> RGBImage {
    let w = image.width, h = image.height
    var pixels = [UInt8](repeating: 0, count: 3 * w * h * 3)
    for y in 0..<h {
        for x in 0..<w {
            let i = y * w + x, row = y * 3 * w
            for c in 0..<3 { pixels[3 * (row + x) + c] = image.pixels[3 * i + c] }
            for (panel, label) in [(1, prediction[i]), (2, truth[i])] {
                let (r, g, b) = paletteColor(label)
                let at = 3 * (row + panel * w + x)
                pixels[at] = r; pixels[at + 1] = g; pixels[at + 2] = b
            }
        }
    }
    return RGBImage(width: 3 * w, height: h, pixels: pixels)
}
