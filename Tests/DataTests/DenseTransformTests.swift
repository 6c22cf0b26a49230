import Foundation
import MAECOCO
import MAEData
import MAEKernels
import XCTest

final class DenseTransformTests: XCTestCase {
    /// Pillow's BILINEAR image resize and NEAREST label resize, byte for byte.
    func testResizesMatchPIL() throws {
        let src = try AugmentFixtures.image("aug_resize_src.rgb", width: 17, height: 13)
        let labels = LabelMap(width: 17, height: 13, labels: try Fixtures.bytes("aug_resize_labels.u8").map { Int32($0) })
        let sample = DenseSample(image: src, boxes: [], labels: [], classMap: labels)
        for c in try AugmentFixtures.cases("resize") {
            let (w, h) = (c["width"] as! Int, c["height"] as! Int)
            let out = sample.resized(width: w, height: h, interpolation: .bilinear)
            assertBytesEqual(out.image.pixels, try Fixtures.bytes("aug_bilinear_\(w)x\(h).rgb"), "bilinear \(w)x\(h)")
            XCTAssertEqual(out.classMap?.labels, try Fixtures.bytes("aug_nearest_\(w)x\(h).u8").map { Int32($0) }, "nearest \(w)x\(h)")
        }
    }

    /// A 4 x 2 image with one instance covering columns 1...2 of row 0 (box [1, 0, 2, 1]).
    func small() -> DenseSample {
        let image = RGBImage(width: 4, height: 2, pixels: (0..<24).map { UInt8($0 * 10) })
        let mask: [UInt8] = [0, 1, 1, 0,
                             0, 0, 0, 0]
        let map = LabelMap(width: 4, height: 2, labels: [0, 3, 3, 0, 0, 0, 0, 1])
        return DenseSample(image: image, boxes: [[1, 0, 2, 1]], labels: [2], masks: [mask], classMap: map)
    }

    func testFlipByHand() {
        let f = small().flippedHorizontally()
        XCTAssertEqual(f.boxes, [[1, 0, 2, 1]])   // 4 - 1 - 2 = 1: symmetric box stays
        XCTAssertEqual(f.classMap?.labels, [0, 3, 3, 0, 1, 0, 0, 0])
        XCTAssertEqual(Array(f.image.pixels[0..<3]), [90, 100, 110])
        let shifted = DenseSample(image: RGBImage(width: 4, height: 2), boxes: [[0, 0, 1, 2]], labels: [0])
        XCTAssertEqual(shifted.flippedHorizontally().boxes, [[3, 0, 1, 2]])
    }

    /// Doubling: boxes scale by 2, masks and class map repeat each pixel (nearest).
    func testResizeByHand() {
        let r = small().resized(width: 8, height: 4)
        XCTAssertEqual(r.boxes, [[2, 0, 4, 2]])
        XCTAssertEqual(r.masks[0], [0, 0, 1, 1, 1, 1, 0, 0,
                                    0, 0, 1, 1, 1, 1, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0,
                                    0, 0, 0, 0, 0, 0, 0, 0])
        XCTAssertEqual(r.classMap?.labels.suffix(8), [0, 0, 0, 0, 0, 0, 1, 1])
        XCTAssertEqual(r.labels, [2])
    }

    /// Cropping clips the box and drops instances left empty; padding fills with the fill colour,
    /// mask zeros and the ignore index.
    func testWindowCropAndPadByHand() {
        let s = small()
        let crop = s.window(top: 0, left: 2, height: 2, width: 2)
        XCTAssertEqual(crop.boxes, [[0, 0, 1, 1]])
        XCTAssertEqual(crop.masks, [[1, 0, 0, 0]])
        XCTAssertEqual(crop.classMap?.labels, [3, 0, 0, 1])
        let gone = s.window(top: 1, left: 0, height: 1, width: 4)
        XCTAssertEqual(gone.boxes, [])
        XCTAssertEqual(gone.masks, [])
        let pad = s.window(top: 0, left: 0, height: 3, width: 5, fill: RGBColor(1, 2, 3))
        XCTAssertEqual(pad.boxes, s.boxes)
        XCTAssertEqual(Array(pad.image.pixels[12..<15]), [1, 2, 3])        // (0, 4) is padding
        XCTAssertEqual(Array(pad.image.pixels[0..<3]), [0, 10, 20])
        XCTAssertEqual(pad.classMap?.labels[4], 255)
        XCTAssertEqual(pad.classMap?.labels[10...14].allSatisfy { $0 == 255 }, true)
        XCTAssertEqual(pad.masks[0], [0, 1, 1, 0, 0,  0, 0, 0, 0, 0,  0, 0, 0, 0, 0])
    }

    /// LSJ: the scale rule, the output size, boxes inside the output, masks agreeing with boxes.
    func testLargeScaleJitter() {
        let lsj = LargeScaleJitter(size: 32)
        // 40 x 20 at s = 0.5: 16 / 40 -> 16 x 8; at s = 2: 64 / 40 -> 64 x 32.
        XCTAssertTrue(lsj.resizedSize(width: 40, height: 20, s: 0.5) == (16, 8))
        XCTAssertTrue(lsj.resizedSize(width: 40, height: 20, s: 2) == (64, 32))
        XCTAssertTrue(lsj.resizedSize(width: 10, height: 10, s: 0.25) == (8, 8))
        var mask = [UInt8](repeating: 0, count: 40 * 20)
        for y in 5..<15 { for x in 10..<30 { mask[y * 40 + x] = 1 } }
        let sample = DenseSample(image: RGBImage(width: 40, height: 20, pixels: [UInt8](repeating: 200, count: 2400)),
                                 boxes: [[10, 5, 20, 10]], labels: [1], masks: [mask],
                                 classMap: LabelMap(width: 40, height: 20, labels: mask.map { Int32($0) }))
        var rng = RandomStream(seed: 8)
        var kept = 0
        for _ in 0..<200 {
            let out = lsj.apply(sample, rng: &rng)
            XCTAssertEqual(out.width, 32); XCTAssertEqual(out.height, 32)
            XCTAssertEqual(out.masks.count, out.boxes.count)
            for (b, m) in zip(out.boxes, out.masks) {
                kept += 1
                XCTAssertTrue(b[0] >= 0 && b[1] >= 0 && b[0] + b[2] <= 32 + 1e-9 && b[1] + b[3] <= 32 + 1e-9, "\(b)")
                // The mask's pixels lie inside the box (to within the nearest-neighbour rounding).
                for y in 0..<32 { for x in 0..<32 where m[y * 32 + x] != 0 {
                    XCTAssertTrue(Double(x) >= b[0] - 1 && Double(x) <= b[0] + b[2] && Double(y) >= b[1] - 1 && Double(y) <= b[1] + b[3])
                } }
            }
        }
        XCTAssertGreaterThan(kept, 150)
    }

    /// The COCO dataset read through MAECOCO gives dense samples: polygons rasterised by the mask API.
    func testCOCOSample() throws {
        let root = temporaryFolder()
        let images = root.appendingPathComponent("img")
        try FileManager.default.createDirectory(at: images, withIntermediateDirectories: true)
        try ImageCodec.writePNG(RGBImage(width: 6, height: 4), to: images.appendingPathComponent("a.png"))
        let rle = RLE(rowMajorMask: [0, 0, 0, 0, 0, 1,
                                     0, 0, 0, 0, 0, 1,
                                     0, 0, 0, 0, 0, 0,
                                     0, 0, 0, 0, 0, 0], height: 4, width: 6)
        let file = COCODataset(
            images: [COCOImage(id: 3, width: 6, height: 4, fileName: "a.png")],
            annotations: [
                COCOAnnotation(id: 1, imageId: 3, categoryId: 5, bbox: [1, 1, 2, 2], area: 4,
                               segmentation: .polygons([[1, 1, 3, 1, 3, 3, 1, 3]])),
                COCOAnnotation(id: 2, imageId: 3, categoryId: 4, bbox: [5, 0, 1, 2], area: 2, segmentation: .rle(rle)),
                COCOAnnotation(id: 3, imageId: 3, categoryId: 4, bbox: [0, 0, 6, 4], area: 24, isCrowd: true,
                               segmentation: .uncompressedRLE(RLE(height: 4, width: 6, counts: [0, 24]))),
            ],
            categories: [COCOCategory(id: 5, name: "b"), COCOCategory(id: 4, name: "a")])
        let ann = root.appendingPathComponent("instances.json")
        try file.write(to: ann)
        let d = try COCODetectionDataset(annotations: ann, imageFolder: images)
        let s = try d.sample(0)
        XCTAssertEqual(s.labels, [1, 0])
        XCTAssertEqual(s.boxes, [[1, 1, 2, 2], [5, 0, 1, 2]])
        // pycocotools rasterises the square (1, 1)-(3, 3) as pixels x, y in 1...2.
        let square = RLE(polygon: [1, 1, 3, 1, 3, 3, 1, 3], height: 4, width: 6).decodeRowMajor()
        XCTAssertEqual(s.masks[0], square)
        XCTAssertEqual(s.masks[0].reduce(0) { $0 + Int($1) }, 4)
        XCTAssertEqual(s.masks[1], rle.decodeRowMajor())
        XCTAssertEqual(try d.sample(0, includeCrowd: true).labels, [1, 0, 0])

        // An RLE of the wrong size, and an image whose size disagrees with the file.
        var bad = file
        bad.annotations[1].segmentation = .rle(RLE(height: 2, width: 2, counts: [4]))
        try bad.write(to: ann)
        XCTAssertThrowsError(try COCODetectionDataset(annotations: ann, imageFolder: images)) {
            XCTAssertTrue("\($0)".contains("instances.json: has annotation 2 with a 2x2 mask"), "\($0)")
        }
        var wrongSize = file
        wrongSize.images[0].width = 7
        wrongSize.annotations = [file.annotations[0]]
        try wrongSize.write(to: ann)
        XCTAssertThrowsError(try COCODetectionDataset(annotations: ann, imageFolder: images).sample(0)) {
            XCTAssertTrue("\($0)".contains("a.png: is 6x4, but its annotations say 7x4"), "\($0)")
        }
    }
}
