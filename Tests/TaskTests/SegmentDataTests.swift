import Foundation
import MAEData
import MAEKernels
@testable import MAETasks
import XCTest

/// mmseg's segmentation pipeline pieces and the dense path of the shared loader.
final class SegmentDataTests: XCTestCase {
    /// mmcv.imrescale: 640x480 into (2048, 512) -> factor 512/480 -> 683x512; 64x64 into (256, 32) -> 32x32.
    func testKeepRatioRescaleAsMMCV() {
        XCTAssertTrue(SegmentationPipeline.rescaledSize(width: 640, height: 480, long: 2048, short: 512) == (683, 512))
        XCTAssertTrue(SegmentationPipeline.rescaledSize(width: 64, height: 64, long: 256, short: 32) == (32, 32))
        XCTAssertTrue(SegmentationPipeline.rescaledSize(width: 100, height: 20, long: 50, short: 40) == (50, 10))
    }

    /// cv2 INTER_NEAREST picks floor(i * in / out): 4 -> 6 repeats rows/columns 0,0,1,2,2,3.
    func testNearestLabelResizeAsOpenCV() {
        let map = LabelMap(width: 4, height: 1, labels: [10, 11, 12, 13])
        XCTAssertEqual(resizeNearestCV(map, width: 6, height: 1).labels, [10, 10, 11, 12, 12, 13])
        XCTAssertEqual(resizeNearestCV(map, width: 2, height: 1).labels, [10, 12])
    }

    /// RandomCrop with cat_max_ratio: a crop that is one class is redrawn; one with two classes under
    /// the ratio is kept; ignored pixels do not count.
    func testCatMaxRatioRetries() {
        // 8x4: the left half class 1, the right half class 2 with a column of 255.
        var labels = [Int32](repeating: 1, count: 32)
        for y in 0..<4 { for x in 4..<8 { labels[y * 8 + x] = x == 7 ? 255 : 2 } }
        let map = LabelMap(width: 8, height: 4, labels: labels)
        let pipeline = SegmentationPipeline(scale: (8, 4), crop: 4)
        var accepted = 0
        for seed in 0..<50 {
            var rng = RandomStream(seed: UInt64(seed))
            let (top, left) = pipeline.cropOrigin(map, rng: &rng)
            XCTAssertEqual(top, 0)
            let window = (left..<(left + 4)).filter { $0 != 7 }
            let ones = window.filter { $0 < 4 }.count, twos = window.count - ones
            if ones > 0 && twos > 0 && Double(max(ones, twos)) / Double(window.count) < 0.75 { accepted += 1 }
        }
        // Acceptable offsets are 1...4 of 0...4 drawn up to 11 times: nearly every seed ends on one.
        XCTAssertGreaterThan(accepted, 45)
    }

    /// Padding after normalisation is exactly 0 in the image and 255 in the labels.
    func testPadAfterNormalise() {
        let image = RGBImage(width: 2, height: 1, pixels: [255, 0, 0, 0, 255, 0])
        let labels = LabelMap(width: 2, height: 1, labels: [3, 4])
        var out = [Float](repeating: 9, count: 3 * 9)
        let padded = out.withUnsafeMutableBufferPointer { normalizePadded(image, labels: labels, side: 3, into: $0.baseAddress!) }
        XCTAssertEqual(padded, [3, 4, 255, 255, 255, 255, 255, 255, 255])
        XCTAssertEqual(out[0], (1 - ImageNetStats.mean[0]) / ImageNetStats.std[0], accuracy: 1e-6)
        XCTAssertEqual(out[2], 0)
        XCTAssertEqual(out[9 + 8], 0)
    }

    /// OpenCV's uint8 HSV round trip: hue in 2-degree steps moves a saturated channel by up to 255/60.
    func testHSVRoundTrip() {
        var rng = RandomStream(seed: 3)
        let rgb = (0..<300).map { _ in Float(rng.below(256)) }
        let back = hsvToRGB(rgbToHSV(rgb))
        for i in rgb.indices { XCTAssertLessThanOrEqual(abs(back[i] - rgb[i]), 5, "value \(i)") }
        XCTAssertEqual(rgbToHSV([255, 0, 0]), [0, 255, 255])
        XCTAssertEqual(rgbToHSV([0, 0, 255]), [120, 255, 255])
    }

    /// The training pipeline through the shared loader: (B, 3, S, S) images and (B, S, S) targets,
    /// labels from the dataset's classes or 255, the same batches with 0 or 2 workers.
    func testDenseLoaderIsDeterministic() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("seg-loader-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let images = root.appendingPathComponent("images"), maps = root.appendingPathComponent("labels")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: maps, withIntermediateDirectories: true)
        for k in 0..<5 {
            var rng = RandomStream(seed: UInt64(k))
            let pixels = (0..<(24 * 16 * 3)).map { _ in UInt8(rng.below(256)) }
            let labels = (0..<(24 * 16)).map { i in Int32((i % 24) / 8) }
            try ImageCodec.writePNG(RGBImage(width: 24, height: 16, pixels: pixels), to: images.appendingPathComponent("s\(k).png"))
            try LabelMapCodec.writePNG(LabelMap(width: 24, height: 16, labels: labels), to: maps.appendingPathComponent("s\(k).png"))
        }
        let dataset = try SegmentationDataset(imageFolder: images, labelFolder: maps, reduceZeroLabel: false)
        let source = SegmentationTrainSource(dataset: dataset, pipeline: SegmentationPipeline(scale: (48, 16), crop: 16))
        func batches(_ workers: Int) throws -> [Batch] {
            let loader = DataLoader(denseSource: source, batchSize: 2, seed: 7, workers: workers)
            let it = loader.epoch(1)
            var out: [Batch] = []
            while let b = try it.next() { out.append(b) }
            return out
        }
        let a = try batches(0), b = try batches(2)
        XCTAssertEqual(a.count, 3)
        XCTAssertEqual(a.map(\.images), b.map(\.images))
        XCTAssertEqual(a.map(\.targets), b.map(\.targets))
        XCTAssertEqual(a[0].targets.count, 2 * 16 * 16)
        XCTAssertEqual(a[0].images.count, 2 * 3 * 16 * 16)
        XCTAssertTrue(a.flatMap(\.targets).allSatisfy { [0, 1, 2, 255].contains($0) })
        XCTAssertTrue(a.flatMap(\.targets).contains(255), "ratio < 1 resizes below the crop: padding")
    }
}
