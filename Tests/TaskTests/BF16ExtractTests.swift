import XCTest
import MAEFormats
import MAEKernels
import MAEModels
import MAETasks
import TestSupport

/// `extract --precision bf16` against PyTorch's autocast on the shipped MAE Shapes checkpoint
/// (Fixtures/bf16_extract_expected.json from scripts/make_bf16_fixtures.py): bf16 features may be no
/// further from fp32 than 2x autocast's, and the default never runs a bf16 product.
final class BF16ExtractTests: XCTestCase {
    struct Expected: Decodable {
        struct Pool: Decodable { let fp32: [Float]; let autocast: [Float]; let autocast_error: Double }
        let img_size: Int
        let crop_ratio: Double
        let cls: Pool
        let avg: Pool
    }

    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }

    private func extract(_ pooling: Pooling, _ precision: Precision?) throws -> (features: [Float], metadata: [String: String]) {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("features-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: out) }
        var o = ExtractOptions(checkpoint: repositoryRoot.appendingPathComponent("Checkpoints/mae_shapes.safetensors"),
                               data: fixture("imagefolder"), out: out)
        o.pooling = pooling
        o.progress = false
        if let precision { o.precision = precision }
        try runExtract(o)
        let file = try SafeTensors.read(contentsOf: out)
        return (file.tensors["features"]!.floats, file.metadata)
    }

    /// max |a - b| / max |b|.
    private func errorRelativeToMax(_ a: [Float], _ b: [Float]) -> Double {
        let err = zip(a, b).map { abs(Double($0) - Double($1)) }.max() ?? 0
        return err / Double(b.map(abs).max() ?? 1)
    }

    func testBF16FeaturesAreNoFurtherFromFP32ThanTwiceAutocasts() throws {
        let expected = try JSONDecoder().decode(Expected.self, from: Data(contentsOf: fixture("bf16_extract_expected.json")))
        XCTAssertEqual(expected.img_size, 32)
        for (pooling, reference) in [(Pooling.cls, expected.cls), (.avg, expected.avg)] {
            let fp32 = try extract(pooling, nil), bf16 = try extract(pooling, .bf16)
            // Our fp32 is PyTorch's fp32 (resized JPEG/PNG inputs: 1e-3, as ExtractTests).
            assertClose(fp32.features, reference.fp32, rtol: 1e-3, atol: 1e-4, "fp32 \(pooling)")
            let error = errorRelativeToMax(bf16.features, fp32.features)
            XCTAssertLessThanOrEqual(error, 2 * reference.autocast_error,
                                     "\(pooling): bf16 error \(error), autocast's \(reference.autocast_error)")
            XCTAssertGreaterThan(error, 1e-5, "\(pooling): the bf16 features really went through bf16")
            XCTAssertEqual(bf16.metadata["precision"], "bf16")
            XCTAssertNil(fp32.metadata["precision"], "fp32 files are as before")
        }
    }

    func testDefaultPrecisionNeverTouchesTheBF16Path() throws {
        let model = try loadVisionTransformer(from: repositoryRoot.appendingPathComponent("Checkpoints/mae_shapes.safetensors")).model
        XCTAssertEqual(model.precision, .fp32)
        let images = Tensor([2, 3, 32, 32], randomValues(2 * 3 * 32 * 32, seed: 9))
        let fp32 = model.forwardFeatures(images: images.data, batch: 2).features.array
        XCTAssertEqual(model.params.bf16Weights.packCount, 0, "fp32 packs nothing")
        model.precision = .bf16
        let bf16 = model.forwardFeatures(images: images.data, batch: 2).features.array
        XCTAssertEqual(model.params.bf16Weights.packCount, 6 * 4 + 1, "qkv, proj, fc1, fc2 per block and the patch embedding")
        XCTAssertNotEqual(bf16, fp32)
        model.precision = .fp32
        XCTAssertEqual(model.forwardFeatures(images: images.data, batch: 2).features.array, fp32,
                       "back in fp32, bit for bit")
    }
}
