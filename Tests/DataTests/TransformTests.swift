import Foundation
import MAEData
import MAEKernels
import TestSupport
import XCTest

final class TransformTests: XCTestCase {
    func source() throws -> RGBImage { try ImageCodec.decode(contentsOf: Fixtures.url("resize_src.png")) }

    /// PIL's bicubic resize, down and up and to odd sizes, byte for byte.
    func testResizeMatchesPIL() throws {
        let src = try source()
        for c in try Fixtures.cases("resize") {
            let name = c["name"] as! String
            let out: RGBImage
            if let short = c["short"] as? Int {
                out = src.resized(shortSide: short)
            } else {
                out = src.resized(width: c["width"] as! Int, height: c["height"] as! Int)
            }
            XCTAssertEqual(out.width, c["width"] as? Int, name)
            XCTAssertEqual(out.height, c["height"] as? Int, name)
            assertBytesEqual(out.pixels, try Fixtures.bytes(name + ".rgb"), name)
        }
    }

    func testCenterCropMatchesTorchvision() throws {
        let src = try source()
        for c in try Fixtures.cases("crop") {
            let name = c["name"] as! String
            let out = src.centerCropped(height: c["height"] as! Int, width: c["width"] as! Int)
            assertBytesEqual(out.pixels, try Fixtures.bytes(name + ".rgb"), name)
        }
    }

    /// Resize + CenterCrop + ToTensor + Normalize as MAE's eval transform, as float32 CHW.
    func testEvalTransformMatchesTorchvision() throws {
        let src = try source()
        for c in try Fixtures.cases("eval") {
            let name = c["name"] as! String
            let out = evalTransform(src, size: c["size"] as! Int, cropRatio: c["ratio"] as! Double).normalizedCHW()
            assertClose(out, try Fixtures.floats(name + ".f32"), rtol: 0, atol: 1e-6, name)
        }
    }

    func testResizedCropMatchesTorchvision() throws {
        let src = try source()
        for c in try Fixtures.cases("resized_crop") {
            let name = c["name"] as! String, size = c["size"] as! Int
            let out = src.cropped(top: c["top"] as! Int, left: c["left"] as! Int,
                                  height: c["height"] as! Int, width: c["width"] as! Int)
                .resized(width: size, height: size)
            assertBytesEqual(out.pixels, try Fixtures.bytes(name + ".rgb"), name)
        }
    }

    func testCropRatioOneLeavesInputSizedImageUnchanged() throws {
        let src = try source().resized(width: 24, height: 24)
        XCTAssertEqual(evalTransform(src, size: 24, cropRatio: 1), src)
    }

    /// The box always lies inside the image with the sampled ratio range; tiny scales fall back.
    func testRandomResizedCropBoxes() {
        let crop = RandomResizedCrop(size: 8, scale: 0.2...1)
        var rng = RandomStream(seed: 3)
        for _ in 0..<500 {
            let w = 5 + rng.below(60), h = 5 + rng.below(60)
            let b = crop.box(width: w, height: h, rng: &rng)
            XCTAssertTrue(b.top >= 0 && b.left >= 0 && b.top + b.height <= h && b.left + b.width <= w)
            XCTAssertTrue(b.width > 0 && b.height > 0)
        }
        // A 100x10 strip cannot hold a crop of ratio <= 4/3 and area >= 90%: the fallback is the
        // centred 13x10 crop (h = 10, w = round(10 * 4/3)).
        let strict = RandomResizedCrop(size: 8, scale: 0.9...1)
        let b = strict.box(width: 100, height: 10, rng: &rng)
        XCTAssertEqual(b.height, 10); XCTAssertEqual(b.width, 13); XCTAssertEqual(b.left, 43); XCTAssertEqual(b.top, 0)
    }

    func testFlipAndNormalize() {
        let image = RGBImage(width: 2, height: 1, pixels: [0, 128, 255, 10, 20, 30])
        XCTAssertEqual(image.flippedHorizontally().pixels, [10, 20, 30, 0, 128, 255])
        let t = image.normalizedCHW()
        XCTAssertEqual(t[0], (0 / 255 - 0.485) / 0.229, accuracy: 1e-7)
        XCTAssertEqual(t[5], (Float(30) / 255 - 0.406) / 0.225, accuracy: 1e-7)
    }

    func testSeededStreamsAreIndependentOfOrder() {
        var a = RandomStream(seed: 7, epoch: 2, index: 5), b = RandomStream(seed: 7, epoch: 2, index: 5)
        var c = RandomStream(seed: 7, epoch: 2, index: 6)
        let xa = (0..<4).map { _ in a.next() }, xb = (0..<4).map { _ in b.next() }, xc = (0..<4).map { _ in c.next() }
        XCTAssertEqual(xa, xb)
        XCTAssertNotEqual(xa, xc)
    }
}
