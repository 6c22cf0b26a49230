import XCTest
import MAEFormats
import MAEModels
import MAETasks
import TestSupport

/// `extract` end to end against PyTorch + timm + torchvision on PNG and JPEG images
/// (Fixtures/ from scripts/make_extract_fixtures.py, weights from the shared mae_tiny fixture).
final class ExtractTests: XCTestCase {
    struct Expected: Decodable {
        struct Case: Decodable { let img_size: Int; let crop_ratio: Double; let cls: [Float]; let avg: [Float] }
        let files: [String]
        let cases: [Case]
        let heads3: Case
    }

    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }

    func testExtractMatchesPyTorch() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: fixture("extract_expected.json")))
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("features-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: out) }
        for c in expected.cases {
            for pooling in [Pooling.cls, .avg] {
                var o = ExtractOptions(checkpoint: fixtureURL("mae_tiny.safetensors"), data: fixture("imagefolder"), out: out)
                o.pooling = pooling
                o.imgSize = c.img_size
                o.cropRatio = c.crop_ratio
                try runExtract(o)
                let file = try SafeTensors.read(contentsOf: out)
                XCTAssertEqual(file.tensors["features"]?.shape, [6, 64])
                XCTAssertEqual(file.tensors["labels"]?.int64s, [0, 0, 0, 1, 1, 1], "ImageFolder order")
                // Resized inputs go through PIL-exact uint8 resampling; a one-level difference moves
                // features by ~1e-4, so resized cases get 1e-3.
                let exact = c.crop_ratio == 1 && c.img_size == 32
                assertClose(file.tensors["features"]!.floats, pooling == .cls ? c.cls : c.avg,
                            rtol: exact ? 1e-4 : 1e-3, atol: exact ? 1e-5 : 1e-4,
                            "\(pooling) at \(c.img_size) px, crop \(c.crop_ratio)")
            }
        }
    }

    /// A training checkpoint (model + optimizer + epoch + scaler + argparse args) of a size no preset
    /// has: 3 heads, width 48, patch 16, 48 px. The head count must come from --heads.
    func testUnseenTrainingCheckpointWithHeadsFlag() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: fixture("extract_expected.json")))
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("features-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: out) }
        var o = ExtractOptions(checkpoint: fixture("train_ckpt_heads3.pth"), data: fixture("imagefolder"), out: out)
        XCTAssertThrowsError(try runExtract(o)) { XCTAssertTrue("\($0)".contains("--heads"), "\($0)") }
        o.heads = 3
        for pooling in [Pooling.cls, .avg] {
            o.pooling = pooling
            try runExtract(o)
            let file = try SafeTensors.read(contentsOf: out)
            assertClose(file.tensors["features"]!.floats, pooling == .cls ? expected.heads3.cls : expected.heads3.avg,
                        rtol: 1e-4, atol: 1e-5, "heads3 \(pooling)")
        }
    }

    func testExtractRefusesBadInputInOneSentence() throws {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("never-\(UUID()).safetensors")
        var o = ExtractOptions(checkpoint: URL(fileURLWithPath: "/nonexistent/model.pth"), data: fixture("imagefolder"), out: out)
        XCTAssertThrowsError(try runExtract(o)) { XCTAssertTrue("\($0)".contains("/nonexistent/model.pth"), "\($0)") }
        o.checkpoint = fixtureURL("mae_tiny.safetensors")
        o.imgSize = 36
        XCTAssertThrowsError(try runExtract(o)) { XCTAssertTrue("\($0)".contains("divisible"), "\($0)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path), "nothing written on failure")
    }
}
