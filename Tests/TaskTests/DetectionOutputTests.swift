import Foundation
import MAECOCO
@testable import MAEData
import MAEDense
import MAEKernels
@testable import MAETasks
import TestSupport
import XCTest

final class DetectionOutputTests: XCTestCase {
    /// A 20 x 16 image with two objects of categories 5 and 9 (class indices 0 and 1).
    func groundTruth() -> COCODataset {
        let a = RLE(box: [2, 3, 6, 5], height: 16, width: 20), b = RLE(box: [10, 8, 7, 6], height: 16, width: 20)
        return COCODataset(images: [COCOImage(id: 42, width: 20, height: 16, fileName: "x.png")],
                           annotations: [COCOAnnotation(id: 1, imageId: 42, categoryId: 5, bbox: [2, 3, 6, 5], area: 30,
                                                        segmentation: .rle(a)),
                                         COCOAnnotation(id: 2, imageId: 42, categoryId: 9, bbox: [10, 8, 7, 6], area: 42,
                                                        segmentation: .rle(b))],
                           categories: [COCOCategory(id: 5, name: "five"), COCOCategory(id: 9, name: "nine")])
    }

    /// Detections equal to the ground truth: COCO ids, xywh boxes, compressed RLE, AP 100 for both
    /// IoU types; a results file written and read back scores the same.
    func testPerfectDetectionsScoreOneHundred() throws {
        let gt = groundTruth()
        let masks = gt.annotations.map { a -> [UInt8] in
            guard case .rle(let r)? = a.segmentation else { return [] }
            return r.decodeRowMajor()
        }
        let d = ImageDetections(boxes: [Box(2, 3, 8, 8), Box(10, 8, 17, 14)], scores: [0.9, 0.8], classes: [0, 1], masks: masks)
        let results = cocoResults(d, imageId: 42, categoryIds: [5, 9], height: 16, width: 20)
        XCTAssertEqual(results.map(\.categoryId), [5, 9])
        XCTAssertEqual(results.map(\.imageId), [42, 42])
        XCTAssertEqual(results[0].bbox, [2, 3, 6, 5])
        guard case .rle(let r)? = results[1].segmentation else { return XCTFail("no RLE") }
        XCTAssertEqual(r.decodeRowMajor(), masks[1])
        let (bbox, segm) = try cocoMetrics(groundTruth: gt, results: results, groundTruthFile: "gt")
        XCTAssertEqual(Set(bbox.keys), Set(cocoStatNames))
        for m in [bbox, segm] {
            XCTAssertEqual(m["AP"]!, 100, accuracy: 1e-9)
            XCTAssertEqual(m["AP50"]!, 100, accuracy: 1e-9)
            XCTAssertEqual(m["APs"]!, 100, accuracy: 1e-9)
            XCTAssertEqual(m["APl"]!, -100, "no large objects: pycocotools' -1, in percent")
        }
        let file = try scratchFolder().appendingPathComponent("detections.json")
        try COCODetection.write(results, to: file)
        let text = try String(contentsOf: file, encoding: .utf8)
        XCTAssertTrue(text.contains("\"counts\":\""), "compressed RLE counts are a string")
        let back = try COCODetection.load(contentsOf: file)
        XCTAssertEqual(try cocoMetrics(groundTruth: gt, results: back, groundTruthFile: "gt").segm, segm)
    }

    /// A misplaced box lowers AP; a missing class lowers recall.
    func testWrongDetectionsScoreLower() throws {
        let d = ImageDetections(boxes: [Box(0, 0, 4, 4)], scores: [0.9], classes: [0], masks: [[UInt8](repeating: 1, count: 320)])
        let (bbox, segm) = try cocoMetrics(groundTruth: groundTruth(), results: cocoResults(d, imageId: 42, categoryIds: [5, 9],
                                                                                         height: 16, width: 20),
                                           groundTruthFile: "gt")
        XCTAssertEqual(bbox["AP"]!, 0, accuracy: 1e-9)
        XCTAssertEqual(segm["AR100"]!, 0, accuracy: 1e-9)
    }

    /// The figure: ground truth and predictions side by side, enlarged, masks tinted.
    func testFigureShowsBothPanels() {
        let image = RGBImage(width: 20, height: 16, pixels: [UInt8](repeating: 200, count: 20 * 16 * 3))
        let mask = RLE(box: [2, 3, 6, 5], height: 16, width: 20)
        let truth = [COCOInstance(id: 1, label: 0, categoryId: 5, bbox: [2, 3, 6, 5], area: 30, isCrowd: false, segmentation: .rle(mask))]
        let d = ImageDetections(boxes: [Box(10, 8, 17, 14)], scores: [0.8], classes: [1],
                                masks: [RLE(box: [10, 8, 7, 6], height: 16, width: 20).decodeRowMajor()])
        let figure = detectionFigure(image: image, truth: truth, detections: d, classes: ["five", "nine"], scale: 4)
        XCTAssertEqual(figure.width, 2 * 80 + 8)
        XCTAssertEqual(figure.height, 64 + 14)
        func pixel(_ x: Int, _ y: Int) -> [UInt8] { Array(figure.pixels[((y * figure.width + x) * 3)..<((y * figure.width + x) * 3 + 3)]) }
        XCTAssertNotEqual(pixel(4 * 4 + 2, 14 + 4 * 5 + 2), [200, 200, 200], "the ground-truth mask is tinted")
        XCTAssertEqual(pixel(4 * 15, 14 + 4 * 2), [200, 200, 200], "outside every object the image shows")
        XCTAssertNotEqual(pixel(88 + 4 * 13, 14 + 4 * 11), [200, 200, 200], "the predicted mask is tinted")
    }
}
