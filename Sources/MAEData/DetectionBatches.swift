import Foundation
import MAEKernels

/// detectron2's pixel statistics (`MODEL.PIXEL_MEAN` / `PIXEL_STD`, RGB on 0..255), which ViTDet
/// normalises with before padding with 0.
public enum DetectronPixels {
    public static let mean: [Float] = [123.675, 116.28, 103.53]
    public static let std: [Float] = [58.395, 57.12, 57.375]

    /// Writes the top-left `height` x `width` pixels of `image` as (p - mean) / std into the (3, S, S)
    /// plane at `out`, and 0 everywhere else (detectron2's `ImageList.from_tensors` padding).
    public static func writeNormalizedCHW(_ image: RGBImage, height: Int, width: Int, size s: Int,
                                          into out: UnsafeMutablePointer<Float>) {
        precondition(height <= min(s, image.height) && width <= min(s, image.width), "the image extent exceeds the input")
        out.initialize(repeating: 0, count: 3 * s * s)
        image.pixels.withUnsafeBufferPointer { p in
            for c in 0..<3 {
                let m = mean[c], d = std[c]
                for y in 0..<height {
                    let row = out + (c * s + y) * s
                    for x in 0..<width { row[x] = (Float(p[3 * (y * image.width + x) + c]) - m) / d }
                }
            }
        }
    }
}

/// One image of a detection batch: its objects in the network's input frame and the sizes that map
/// predictions back to the image's file.
public struct InstanceTargets: Sendable, Equatable {
    /// (N, 4) boxes x0, y0, x1, y1 in input pixels, flat (detectron2's `Boxes`).
    public var boxes: [Float]
    /// Class index 0..<K of each object.
    public var labels: [Int]
    /// One (S, S) row-major 0/1 mask per object at the padded input size S, or none (test batches).
    public var masks: [[UInt8]]
    /// The image's extent inside the padded S x S input (detectron2's `image_sizes`: proposals and
    /// detections are clipped to it).
    public var height: Int, width: Int
    /// The image's size in its file (detections are rescaled to it).
    public var originalHeight: Int, originalWidth: Int

    public var count: Int { labels.count }
}

/// Batches of a COCO instances dataset as ViTDet trains and tests on them, for the shared `DataLoader`.
///
/// Training (`lsj` set): crowd annotations dropped, then large-scale jitter (flip first, resize by a
/// scale in 0.1...2.0 of `size`, a `size` x `size` crop), each object's box recomputed as the tight box
/// of its cropped mask (detectron2's `recompute_boxes` with `BitMasks.get_bounding_boxes`: the mask's
/// first and last set column and row, + 1), objects whose crop is empty dropped; the image is normalised
/// with detectron2's pixel mean/std and the area outside the resized image is 0. Testing: the long side
/// resized to `size` (detectron2's `ResizeShortestEdge(size, max_size=size)`, PIL bilinear), normalised,
/// zero-padded to `size` x `size`, no targets but the sizes. Masks come from the annotations decoded as
/// bitmasks (polygons rasterised as pycocotools does), not from detectron2's polygon cropping.
public struct DetectionBatchBuilder: BatchBuilder {
    public let dataset: COCODetectionDataset
    /// The padded square input side.
    public let size: Int
    /// The training augmentation; nil: the test transform.
    public let lsj: LargeScaleJitter?

    public var count: Int { dataset.count }

    /// A training builder with ViTDet's jitter at `size`.
    public static func training(_ dataset: COCODetectionDataset, size: Int, scale: ClosedRange<Double> = 0.1...2.0) -> DetectionBatchBuilder {
        DetectionBatchBuilder(dataset: dataset, size: size, lsj: LargeScaleJitter(size: size, scale: scale))
    }

    /// A test builder: long side to `size`, zero square padding.
    public static func test(_ dataset: COCODetectionDataset, size: Int) -> DetectionBatchBuilder {
        DetectionBatchBuilder(dataset: dataset, size: size, lsj: nil)
    }

    public init(dataset: COCODetectionDataset, size: Int, lsj: LargeScaleJitter?) {
        precondition(size > 0 && (lsj == nil || lsj!.size == size), "the jitter's crop is the input size")
        self.dataset = dataset; self.size = size; self.lsj = lsj
    }

    /// detectron2's `ResizeShortestEdge.get_output_shape(h, w, size, size)`: (height, width).
    public static func testSize(height: Int, width: Int, size: Int) -> (height: Int, width: Int) {
        let s = Double(size), scale = s / Double(min(height, width))
        var (h, w) = height < width ? (s, scale * Double(width)) : (scale * Double(height), s)
        if max(h, w) > s {
            let shrink = s / max(h, w)
            h *= shrink
            w *= shrink
        }
        return (Int(h + 0.5), Int(w + 0.5))
    }

    /// Image `index` as the network sees it: its pixels (at most `size` x `size`, top-left aligned) and targets.
    public func sample(_ index: Int, rng: inout RandomStream) throws -> (image: RGBImage, targets: InstanceTargets) {
        let entry = dataset.images[index]
        guard let lsj else {
            let image = try ImageCodec.decode(contentsOf: dataset.imageURL(index))
            let (h, w) = Self.testSize(height: image.height, width: image.width, size: size)
            let resized = DenseSample(image: image, boxes: [], labels: []).resized(width: w, height: h).image
            return (resized, InstanceTargets(boxes: [], labels: [], masks: [], height: h, width: w,
                                             originalHeight: entry.height, originalWidth: entry.width))
        }
        let (cropped, h, w) = lsj.applyReportingExtent(try dataset.sample(index), rng: &rng)
        var boxes: [Float] = []
        if cropped.masks.isEmpty {
            for b in cropped.boxes { boxes += [Float(b[0]), Float(b[1]), Float(b[0] + b[2]), Float(b[1] + b[3])] }
        } else {
            for mask in cropped.masks { boxes += Self.tightBox(mask, size: size) }
        }
        return (cropped.image, InstanceTargets(boxes: boxes, labels: cropped.labels, masks: cropped.masks, height: h, width: w,
                                               originalHeight: entry.height, originalWidth: entry.width))
    }

    /// The tight box of a non-empty (S, S) mask: first set column and row, last + 1.
    static func tightBox(_ mask: [UInt8], size s: Int) -> [Float] {
        var x0 = s, y0 = s, x1 = -1, y1 = -1
        for y in 0..<s {
            for x in 0..<s where mask[y * s + x] != 0 {
                x0 = min(x0, x); x1 = max(x1, x)
                y0 = min(y0, y); y1 = max(y1, y)
            }
        }
        return [Float(x0), Float(y0), Float(x1 + 1), Float(y1 + 1)]
    }

    public func batch(indices: [Int], epoch: Int, seed: UInt64) throws -> Batch {
        let plane = 3 * size * size
        var images = [Float](repeating: 0, count: indices.count * plane)
        var targets: [InstanceTargets] = []
        try images.withUnsafeMutableBufferPointer { out in
            for (k, index) in indices.enumerated() {
                var rng = RandomStream(seed: seed, epoch: epoch, index: index)
                let (image, t) = try sample(index, rng: &rng)
                DetectronPixels.writeNormalizedCHW(image, height: t.height, width: t.width, size: size,
                                                   into: out.baseAddress! + k * plane)
                targets.append(t)
            }
        }
        return Batch(images: images, labels: [], indices: indices, instances: targets)
    }
}
