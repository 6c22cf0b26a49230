import Foundation
import MAEData
import XCTest

final class CodecTests: XCTestCase {
    /// Every PNG and JPEG flavour decodes to the bytes PIL's `.convert('RGB')` gives.
    func testDecodeMatchesPIL() throws {
        for c in try Fixtures.cases("decode") {
            let name = c["file"] as! String
            let image = try ImageCodec.decode(contentsOf: Fixtures.url(name))
            XCTAssertEqual(image.width, c["width"] as? Int, name)
            XCTAssertEqual(image.height, c["height"] as? Int, name)
            assertBytesEqual(image.pixels, try Fixtures.bytes(name + ".rgb"), name)
        }
    }

    /// Label maps give palette indices (VOC), gray values (ADE) and 16-bit values as numpy does.
    func testLabelMapsMatchNumpy() throws {
        for c in try Fixtures.cases("labels") {
            let name = c["file"] as! String
            let map = try LabelMapCodec.read(contentsOf: Fixtures.url(name))
            XCTAssertEqual(map.width, c["width"] as? Int, name)
            XCTAssertEqual(map.height, c["height"] as? Int, name)
            XCTAssertEqual(map.labels, try Fixtures.int32s(name + ".i32"), name)
        }
    }

    /// The one label-map decoder (seg-eval's and the dense datasets') on every PNG kind a label map
    /// comes in (scripts/make_labelmap_fixtures.py): gray 4/8/16-bit, palette, gray + alpha 8/16-bit and
    /// a gray tRNS give numpy's values; RGB and RGBA are refused naming the file.
    func testEveryLabelMapKindMatchesNumpy() throws {
        let folder = Fixtures.url("labelmaps")
        let expected = try XCTUnwrap(try JSONSerialization.jsonObject(
            with: Data(contentsOf: folder.appendingPathComponent("expected.json"))) as? [String: Any])
        XCTAssertEqual(expected.count, 9, "every kind is checked")
        for (name, value) in expected.sorted(by: { $0.key < $1.key }) {
            let url = folder.appendingPathComponent(name)
            guard let c = value as? [String: Any] else {
                XCTAssertThrowsError(try LabelMapCodec.read(contentsOf: url), name) { error in
                    XCTAssertEqual("\(error)", "\(url.path): is an RGB PNG, but a label map must be a gray or palette PNG")
                }
                continue
            }
            let map = try LabelMapCodec.read(contentsOf: url)
            XCTAssertEqual(map.width, c["width"] as? Int, name)
            XCTAssertEqual(map.height, c["height"] as? Int, name)
            let numpy = try XCTUnwrap(c["labels"] as? [Int], name).map(Int32.init)
            if name == "gray_alpha16.png" {
                // libpng reduces 16-bit gray + alpha to 8 bits by rounding (v / 257), PIL keeps the high byte.
                XCTAssertEqual(map.labels.count, numpy.count, name)
                let worst = zip(map.labels, numpy).map { abs($0 - $1) }.max() ?? 0
                XCTAssertLessThanOrEqual(worst, 1, "\(name): \(map.labels) vs \(numpy)")
            } else {
                XCTAssertEqual(map.labels, numpy, name)
            }
        }
    }

    func testBrokenFilesThrowErrorsNamingTheFile() throws {
        for name in try Fixtures.index()["errors"] as! [String] {
            XCTAssertThrowsError(try ImageCodec.decode(contentsOf: Fixtures.url(name)), name) { error in
                let text = "\(error)"
                XCTAssertTrue(text.contains(name), "error for \(name) does not name it: \(text)")
                XCTAssertFalse(text.contains("\n"), "error for \(name) is not one line: \(text)")
            }
        }
        XCTAssertThrowsError(try ImageCodec.decode(contentsOf: Fixtures.url("missing.png"))) { error in
            XCTAssertTrue("\(error)".contains("missing.png: does not exist"), "\(error)")
        }
    }

    /// A JPEG whose frame header (SOF) claims far more pixels than its entropy data holds: libjpeg
    /// warns ("Corrupt JPEG data: premature end of data segment") and pads with grey; we refuse it,
    /// as PIL does ("image file is truncated").
    func testJPEGWithLessDataThanItsFrameIsRefused() throws {
        var bytes = try Fixtures.bytes("q90_420.jpg")
        let sof = try XCTUnwrap((0..<(bytes.count - 1)).first { bytes[$0] == 0xFF && bytes[$0 + 1] == 0xC0 })
        for (offset, value) in [(5, 2000), (7, 2000)] {   // height, width (big-endian)
            bytes[sof + offset] = UInt8(value >> 8)
            bytes[sof + offset + 1] = UInt8(value & 0xFF)
        }
        // Extraneous bytes between markers (common in ImageNet) still give the complete image.
        let original = try Fixtures.bytes("q90_420.jpg")
        var padded = original
        padded.insert(contentsOf: [0x00, 0x00, 0x00], at: sof)
        XCTAssertEqual(try ImageCodec.decode(Data(padded), name: URL(fileURLWithPath: "padded.jpg")).pixels,
                       try ImageCodec.decode(Data(original), name: URL(fileURLWithPath: "q90_420.jpg")).pixels)
        let name = URL(fileURLWithPath: "big-frame.jpg")
        XCTAssertThrowsError(try ImageCodec.decode(Data(bytes), name: name)) { error in
            XCTAssertTrue("\(error)".contains("big-frame.jpg: is a truncated or corrupt JPEG ("), "\(error)")
        }
    }

    /// A JPEG cut to 20 bytes ends before its frame header: truncated, not "a JPEG of 0x0 pixels".
    func testJPEGCutShortIsTruncated() throws {
        let bytes = try Fixtures.bytes("q90_420.jpg")
        for length in [4, 20, 200] {
            XCTAssertThrowsError(try ImageCodec.decode(Data(bytes.prefix(length)), name: URL(fileURLWithPath: "cut.jpg"))) { error in
                XCTAssertTrue("\(error)".contains("cut.jpg: is a truncated or corrupt JPEG ("), "\(length) bytes: \(error)")
            }
        }
    }

    func testPNGWriteRoundTrip() throws {
        let folder = temporaryFolder()
        var image = RGBImage(width: 5, height: 3)
        for i in 0..<image.pixels.count { image.pixels[i] = UInt8(i * 7 % 256) }
        let url = folder.appendingPathComponent("a.png")
        try ImageCodec.writePNG(image, to: url)
        XCTAssertEqual(try ImageCodec.decode(contentsOf: url), image)

        for labels: [Int32] in [[0, 1, 255, 7, 3, 2], [0, 300, 65535, 1, 2, 3]] {
            let map = LabelMap(width: 3, height: 2, labels: labels)
            let mapURL = folder.appendingPathComponent("l.png")
            try LabelMapCodec.writePNG(map, to: mapURL)
            XCTAssertEqual(try LabelMapCodec.read(contentsOf: mapURL), map)
        }
        XCTAssertThrowsError(try LabelMapCodec.writePNG(LabelMap(width: 1, height: 1, labels: [-1]),
                                                        to: folder.appendingPathComponent("neg.png")))
        XCTAssertThrowsError(try LabelMapCodec.read(contentsOf: Fixtures.url("rgb8.png"))) { error in
            XCTAssertTrue("\(error)".contains("rgb8.png"))
        }
    }
}
