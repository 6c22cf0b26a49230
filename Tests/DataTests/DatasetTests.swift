import Foundation
import MAECOCO
import MAEData
import XCTest

final class DatasetTests: XCTestCase {
    func touch(_ url: URL) throws {
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try ImageCodec.writePNG(RGBImage(width: 2, height: 2), to: url)
    }

    /// Classes by code point (uppercase before lowercase), files by name within os.walk's sorted
    /// roots, extensions case-insensitive, other files skipped: torchvision's order.
    func testImageFolderOrderMatchesTorchvision() throws {
        let root = temporaryFolder()
        for path in ["b/2.png", "b/10.PNG", "b/sub/a.jpg", "b/a.txt", "B/x.jpeg", "a/z.png", "a/y.png", "a_b/k.png"] {
            try touch(root.appendingPathComponent(path))
        }
        let folder = try ImageFolder(root: root)
        XCTAssertEqual(folder.classes, ["B", "a", "a_b", "b"])
        let rel = folder.samples.map { String($0.url.path.dropFirst(root.path.count + 1)) + ":\($0.label)" }
        XCTAssertEqual(rel, ["B/x.jpeg:0", "a/y.png:1", "a/z.png:1", "a_b/k.png:2", "b/10.PNG:3", "b/2.png:3", "b/sub/a.jpg:3"])
    }

    func testImageFolderErrorsNameTheFolder() throws {
        let root = temporaryFolder()
        XCTAssertThrowsError(try ImageFolder(root: root)) { XCTAssertTrue("\($0)".contains("no class sub-folders")) }
        try FileManager.default.createDirectory(at: root.appendingPathComponent("cat"), withIntermediateDirectories: true)
        XCTAssertThrowsError(try ImageFolder(root: root)) { XCTAssertTrue("\($0)".contains("cat: is an empty class folder"), "\($0)") }
    }

    func testCIFARBinaryBatches() throws {
        let root = temporaryFolder()
        // Two CIFAR-100 records: coarse, fine, then R, G, B planes.
        var bytes: [UInt8] = []
        for (coarse, fine, base) in [(3, 42, 0), (19, 99, 7)] {
            bytes += [UInt8(coarse), UInt8(fine)]
            for c in 0..<3 { bytes += (0..<1024).map { UInt8((base + c * 50 + $0) % 256) } }
        }
        try Data(bytes).write(to: root.appendingPathComponent("train.bin"))
        let d = try CIFARDataset.load(folder: root, split: .train)
        XCTAssertEqual(d.labels, [42, 99])
        XCTAssertEqual(d.coarseLabels, [3, 19])
        let img = d.image(1)
        // Pixel (0, 1) of image 1: R = 7 + 1, G = 57 + 1, B = 107 + 1.
        XCTAssertEqual(Array(img.pixels[3..<6]), [8, 58, 108])
        try Data(bytes.dropLast()).write(to: root.appendingPathComponent("train.bin"))
        XCTAssertThrowsError(try CIFARDataset.load(folder: root, split: .train)) { XCTAssertTrue("\($0)".contains("train.bin")) }
        // CIFAR-10: one label byte.
        try Data([5] + [UInt8](repeating: 1, count: 3072)).write(to: root.appendingPathComponent("test_batch.bin"))
        XCTAssertEqual(try CIFARDataset.load(folder: root, split: .test).labels, [5])
    }

    func testCOCOParsingAndErrors() throws {
        let root = temporaryFolder()
        try touch(root.appendingPathComponent("img/a.png"))
        let json = """
        {"images": [{"id": 7, "file_name": "a.png", "width": 2, "height": 2}],
         "categories": [{"id": 9, "name": "dog"}, {"id": 3, "name": "cat"}],
         "annotations": [
          {"id": 1, "image_id": 7, "category_id": 9, "bbox": [0, 0, 1, 2], "area": 2, "iscrowd": 0,
           "segmentation": [[0, 0, 1, 0, 1, 2, 0, 2]]},
          {"id": 2, "image_id": 7, "category_id": 3, "bbox": [1, 0, 1, 2], "area": 2, "iscrowd": 1,
           "segmentation": {"counts": [2, 2], "size": [2, 2]}},
          {"id": 3, "image_id": 7, "category_id": 3, "bbox": [0, 0, 2, 1], "area": 2, "iscrowd": 0,
           "segmentation": {"counts": "0111", "size": [2, 2]}}]}
        """
        let ann = root.appendingPathComponent("instances.json")
        try json.write(to: ann, atomically: true, encoding: .utf8)
        let d = try COCODetectionDataset(annotations: ann, imageFolder: root.appendingPathComponent("img"))
        XCTAssertEqual(d.classes, ["cat", "dog"])
        XCTAssertEqual(d.instances[0].map(\.label), [1, 0, 0])
        XCTAssertEqual(d.instances[0][1].isCrowd, true)
        XCTAssertEqual(d.instances[0][1].mask(height: 2, width: 2)?.decodeRowMajor(), [0, 1, 0, 1])
        // "0111" is pycocotools' compressed counts [0, 1, 1, 2]; mask.decode gives [[1, 1], [0, 1]].
        XCTAssertEqual(d.instances[0][2].mask(height: 2, width: 2)?.decodeRowMajor(), [1, 1, 0, 1])

        let missing = json.replacingOccurrences(of: "\"image_id\": 7, \"category_id\": 3, \"bbox\": [1",
                                                with: "\"image_id\": 8, \"category_id\": 3, \"bbox\": [1")
        try missing.write(to: ann, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try COCODetectionDataset(annotations: ann, imageFolder: root.appendingPathComponent("img"))) {
            XCTAssertTrue("\($0)".contains("instances.json: has annotation 2 pointing at image id 8"), "\($0)")
        }
        try json.write(to: ann, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try COCODetectionDataset(annotations: ann, imageFolder: root)) {
            XCTAssertTrue("\($0)".contains("a.png, which is missing"), "\($0)")
        }
        try "{\"images\": [".write(to: ann, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try COCODetectionDataset(annotations: ann, imageFolder: root)) {
            XCTAssertTrue("\($0)".contains("instances.json"), "\($0)")
        }
    }

    func testRLERoundTrip() {
        let mask: [UInt8] = [1, 0, 0, 1, 1, 1]   // (2, 3) row-major
        let rle = RLE(rowMajorMask: mask, height: 2, width: 3)
        // Column-major: 1 1 | 0 1 | 0 1, zeros first; pycocotools' frPyObjects agrees ('021O00').
        XCTAssertEqual(rle.counts, [0, 2, 1, 1, 1, 1])
        XCTAssertEqual(rle.compressedCounts, "021O00")
        XCTAssertEqual(rle.decodeRowMajor(), mask)
    }

    func testSegmentationLabelMaps() throws {
        let root = temporaryFolder()
        let images = root.appendingPathComponent("images"), labels = root.appendingPathComponent("labels")
        try touch(images.appendingPathComponent("x.png"))
        try FileManager.default.createDirectory(at: labels, withIntermediateDirectories: true)
        try LabelMapCodec.writePNG(LabelMap(width: 2, height: 2, labels: [0, 1, 150, 255]), to: labels.appendingPathComponent("x.png"))
        let ade = try SegmentationDataset(imageFolder: images, labelFolder: labels, reduceZeroLabel: true)
        XCTAssertEqual(try ade.sample(0).labels.labels, [255, 0, 149, 255])
        let voc = try SegmentationDataset(imageFolder: images, labelFolder: labels, reduceZeroLabel: false)
        XCTAssertEqual(try voc.sample(0).labels.labels, [0, 1, 150, 255])
        try LabelMapCodec.writePNG(LabelMap(width: 3, height: 2, labels: [0, 0, 0, 0, 0, 0]), to: labels.appendingPathComponent("x.png"))
        XCTAssertThrowsError(try voc.sample(0)) {
            XCTAssertTrue("\($0)".contains("x.png: is a 3x2 label map for a 2x2 image"), "\($0)")
        }
    }
}
