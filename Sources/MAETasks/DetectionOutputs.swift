// What a detection run writes besides its log: COCO results (`detections.json`), the 12 COCO numbers
// of bbox and segm (`metrics.json`), and figures of predictions beside the ground truth.
import Foundation
import MAECOCO
import MAEData
import MAEDense
import MAEMetrics

/// The 12 numbers of pycocotools' summarize(), in its order, by the names `metrics.json` uses.
public let cocoStatNames = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]

/// One image's detections as COCO results, as detectron2's `instances_to_coco_json`: the dataset's
/// category id for each class index, `bbox` [x, y, w, h] in original pixels, the score, and the mask
/// as compressed RLE (pycocotools' `encode` of the column-major mask).
public func cocoResults(_ detections: ImageDetections, imageId: Int, categoryIds: [Int], height: Int, width: Int) -> [COCODetection] {
    detections.boxes.indices.map { i in
        let b = detections.boxes[i]
        let mask = detections.masks.isEmpty ? nil
            : COCOSegmentation.rle(RLE(rowMajorMask: detections.masks[i], height: height, width: width))
        return COCODetection(imageId: imageId, categoryId: categoryIds[detections.classes[i]], score: Double(detections.scores[i]),
                             bbox: [Double(b.x0), Double(b.y0), Double(b.x1 - b.x0), Double(b.y1 - b.y0)], segmentation: mask)
    }
}

/// COCO AP of `results` against `groundTruth` for boxes and masks: each the 12 summary numbers times
/// 100 by name (pycocotools' -1 for an area range without ground truth becomes -100).
public func cocoMetrics(groundTruth: COCODataset, results: [COCODetection], groundTruthFile: String)
    throws -> (bbox: [String: Double], segm: [String: Double]) {
    func score(_ type: COCOIoUType) throws -> [String: Double] {
        let stats = try COCOEvaluator(groundTruth: groundTruth, detections: results, iouType: type,
                                      groundTruthFile: groundTruthFile).run().stats
        return Dictionary(uniqueKeysWithValues: zip(cocoStatNames, stats.map { $0 * 100 }))
    }
    return (try score(.bbox), try score(.segm))
}

/// A figure of one image: the ground truth on the left, the detections scoring at least `minScore`
/// on the right, each object's mask tinted in its class colour, its box outlined and its class name
/// (and score) written above it; the image is enlarged `scale` times (nearest) so the labels are legible.
public func detectionFigure(image: RGBImage, truth: [COCOInstance], detections: ImageDetections, classes: [String],
                            minScore: Float = 0.3, scale: Int = 4) -> RGBImage {
    let w = image.width * scale, h = image.height * scale, gap = 8, header = 14
    var canvas = Canvas(width: 2 * w + gap, height: h + header)
    canvas.text("ground truth", x: 2, y: 3, color: (0, 0, 0))
    canvas.text("predictions, score \(String(format: "%.1f", minScore))+", x: w + gap + 2, y: 3, color: (0, 0, 0))
    let palette = LinePlot.palette
    func panel(left: Int, objects: [(mask: [UInt8]?, box: [Double], label: String, cls: Int)]) {
        for y in 0..<h {
            for x in 0..<w {
                let src = ((y / scale) * image.width + x / scale) * 3
                var c = (Double(image.pixels[src]), Double(image.pixels[src + 1]), Double(image.pixels[src + 2]))
                for o in objects {
                    guard let mask = o.mask, mask[(y / scale) * image.width + x / scale] != 0 else { continue }
                    let p = palette[o.cls % palette.count]
                    c = (0.5 * c.0 + 0.5 * Double(p.0), 0.5 * c.1 + 0.5 * Double(p.1), 0.5 * c.2 + 0.5 * Double(p.2))
                }
                canvas.set(left + x, header + y, (UInt8(c.0), UInt8(c.1), UInt8(c.2)))
            }
        }
        for o in objects {
            let p = palette[o.cls % palette.count]
            let x0 = left + Int(o.box[0] * Double(scale)), y0 = header + Int(o.box[1] * Double(scale))
            let x1 = left + min(Int((o.box[0] + o.box[2]) * Double(scale)), w - 1)
            let y1 = header + min(Int((o.box[1] + o.box[3]) * Double(scale)), h - 1)
            canvas.line(x0, y0, x1, y0, color: p); canvas.line(x0, y1, x1, y1, color: p)
            canvas.line(x0, y0, x0, y1, color: p); canvas.line(x1, y0, x1, y1, color: p)
            canvas.fill(x0, max(header, y0 - 9), Canvas.textWidth(o.label) + 2, 9, color: p)
            canvas.text(o.label, x: x0 + 1, y: max(header, y0 - 9) + 1, color: (255, 255, 255))
        }
    }
    panel(left: 0, objects: truth.filter { !$0.isCrowd }.map { t in
        (t.mask(height: image.height, width: image.width)?.decodeRowMajor(), t.bbox, classes[t.label], t.label)
    })
    let shown = detections.boxes.indices.filter { detections.scores[$0] >= minScore }
    panel(left: w + gap, objects: shown.map { i in
        let b = detections.boxes[i]
        return (detections.masks.isEmpty ? nil : detections.masks[i],
                [Double(b.x0), Double(b.y0), Double(b.x1 - b.x0), Double(b.y1 - b.y0)],
                "\(classes[detections.classes[i]]) \(String(format: "%.2f", detections.scores[i]))", detections.classes[i])
    })
    return canvas.image
}
