import Foundation
import MAEData
import MAEKernels
import TestSupport
import XCTest

final class DetectionBatchTests: XCTestCase {
    /// Two images: a 32 x 32 one with a polygon square, an RLE-free crowd blob and a second square,
    /// and a 40 x 20 one with one polygon; categories 7 and 3 (so label 0 is category 3).
    func tinyCOCO() throws -> COCODetectionDataset {
        let root = try scratchFolder()
        var a = RGBImage(width: 32, height: 32)
        for i in 0..<(32 * 32) { a.pixels[3 * i] = UInt8(i % 251); a.pixels[3 * i + 1] = 90; a.pixels[3 * i + 2] = 200 }
        let b = RGBImage(width: 40, height: 20, pixels: [UInt8](repeating: 150, count: 40 * 20 * 3))
        try ImageCodec.writePNG(a, to: root.appendingPathComponent("a.png"))
        try ImageCodec.writePNG(b, to: root.appendingPathComponent("b.png"))
        let json = """
        {"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32},
                    {"id": 2, "file_name": "b.png", "width": 40, "height": 20}],
         "categories": [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}],
         "annotations": [
           {"id": 10, "image_id": 1, "category_id": 7, "bbox": [4, 6, 10, 8], "area": 80, "iscrowd": 0,
            "segmentation": [[4, 6, 14, 6, 14, 14, 4, 14]]},
           {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 32, 32], "area": 1024, "iscrowd": 1,
            "segmentation": [[0, 0, 32, 0, 32, 32, 0, 32]]},
           {"id": 12, "image_id": 1, "category_id": 3, "bbox": [20, 20, 6, 6], "area": 36, "iscrowd": 0,
            "segmentation": [[20, 20, 26, 20, 26, 26, 20, 26]]},
           {"id": 13, "image_id": 2, "category_id": 7, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0,
            "segmentation": [[2, 2, 12, 2, 12, 12, 2, 12]]}]}
        """
        let annotations = root.appendingPathComponent("instances.json")
        try Data(json.utf8).write(to: annotations)
        return try COCODetectionDataset(annotations: annotations, imageFolder: root)
    }

    /// detectron2's ResizeShortestEdge(size, max_size=size) sizes (get_output_shape, by hand).
    func testTestSizeIsLongSideToSize() {
        XCTAssertTrue(DetectionBatchBuilder.testSize(height: 480, width: 640, size: 1024) == (768, 1024))
        XCTAssertTrue(DetectionBatchBuilder.testSize(height: 64, width: 64, size: 64) == (64, 64))
        // 100 x 37 to 64: (172.97, 64) shrunk by 64 / 172.97 -> (64, 23.68) -> int(x + 0.5) = 24.
        XCTAssertTrue(DetectionBatchBuilder.testSize(height: 100, width: 37, size: 64) == (64, 24))
        XCTAssertTrue(DetectionBatchBuilder.testSize(height: 20, width: 40, size: 32) == (16, 32))
    }

    /// Test batches: resized, normalised with detectron2's mean/std, zero outside the image, sizes kept.
    func testTestBatchPadsWithZeroAfterNormalising() throws {
        let data = try tinyCOCO()
        let batch = try DetectionBatchBuilder.test(data, size: 32).batch(indices: [1], epoch: 0, seed: 0)
        let t = try XCTUnwrap(batch.instances.first)
        XCTAssertEqual([t.height, t.width, t.originalHeight, t.originalWidth], [16, 32, 20, 40])
        XCTAssertEqual(t.count, 0)
        for c in 0..<3 {
            let expect = (150 - DetectronPixels.mean[c]) / DetectronPixels.std[c]
            for y in 0..<32 {
                for x in 0..<32 {
                    XCTAssertEqual(batch.images[(c * 32 + y) * 32 + x], y < 16 ? expect : 0, accuracy: 1e-6, "c \(c) y \(y) x \(x)")
                }
            }
        }
    }

    /// Training without jitter (scale 1, no flip): crowd dropped, boxes the tight boxes of the masks
    /// (pycocotools rasterises the polygon square [4, 14] to columns 4...13), labels by sorted category id.
    func testTrainingTargetsDropCrowdAndRecomputeBoxesFromMasks() throws {
        let data = try tinyCOCO()
        let builder = DetectionBatchBuilder(dataset: data, size: 32,
                                            lsj: LargeScaleJitter(size: 32, scale: 1...1, flipProbability: 0))
        let t = try XCTUnwrap(try builder.batch(indices: [0], epoch: 1, seed: 3).instances.first)
        XCTAssertEqual(t.labels, [1, 0])
        XCTAssertEqual(t.boxes, [4, 6, 14, 14, 20, 20, 26, 26])
        XCTAssertEqual(t.masks.count, 2)
        XCTAssertEqual(t.masks[0].count, 32 * 32)
        XCTAssertEqual(t.masks[0].reduce(0) { $0 + Int($1) }, 10 * 8)
        XCTAssertEqual([t.height, t.width], [32, 32])
    }

    /// With jitter: every box is the tight box of its mask, every mask non-empty, the padding 0; the
    /// batches are the same with 0 or 2 workers and differ between epochs.
    func testJitteredBatchesAreConsistentAndDeterministic() throws {
        let data = try tinyCOCO()
        let builder = DetectionBatchBuilder.training(data, size: 24)
        func epochs(workers: Int) throws -> [[Batch]] {
            let loader = DataLoader(builder: builder, batchSize: 2, seed: 9, workers: workers)
            return try (1...3).map { e in
                var out: [Batch] = []
                let it = loader.epoch(e)
                while let b = try it.next() { out.append(b) }
                return out
            }
        }
        let serial = try epochs(workers: 0), parallel = try epochs(workers: 2)
        XCTAssertEqual(serial.map { $0.map(\.images) }, parallel.map { $0.map(\.images) })
        XCTAssertEqual(serial.map { $0.map(\.instances) }, parallel.map { $0.map(\.instances) })
        XCTAssertNotEqual(serial[0][0].images, serial[1][0].images)
        for batch in serial.joined() {
            for (k, t) in batch.instances.enumerated() {
                XCTAssertEqual(t.masks.count, t.count)
                for (i, mask) in t.masks.enumerated() {
                    XCTAssertTrue(mask.contains(1))
                    var x0 = 24, y0 = 24, x1 = 0, y1 = 0
                    for y in 0..<24 { for x in 0..<24 where mask[y * 24 + x] != 0 {
                        x0 = min(x0, x); y0 = min(y0, y); x1 = max(x1, x + 1); y1 = max(y1, y + 1)
                    } }
                    XCTAssertEqual(Array(t.boxes[(4 * i)..<(4 * i + 4)]), [Float(x0), Float(y0), Float(x1), Float(y1)])
                }
                let plane = batch.images[(k * 3 * 576)..<((k + 1) * 3 * 576)]
                for c in 0..<3 { for y in 0..<24 { for x in 0..<24 where y >= t.height || x >= t.width {
                    XCTAssertEqual(plane[plane.startIndex + (c * 24 + y) * 24 + x], 0)
                } } }
            }
        }
    }
}
