import Foundation
import MAEData
import MAETasks
import TestSupport
import XCTest

/// `segment --eval-only` on mmseg-layout weights gives mmsegmentation's own predictions: label maps
/// that mmseg 1.2.2's `inference_model` wrote for a tiny seeded MAE UperNet
/// (scripts/make_mmseg_reference.py; Fixtures/dense_reference/README.md).
final class SegmentReferenceTests: XCTestCase {
    func reference(_ name: String) -> URL {
        Bundle.module.url(forResource: "Fixtures/dense_reference/" + name, withExtension: nil)!
    }

    /// Pixels that may differ from mmseg's map: where its top two logits are within 1e-3 (the script
    /// counts 0 to 2 per image); and, for an image the test Resize changes, 1% more: mmseg resizes with
    /// cv2's INTER_LINEAR, whose fixed-point weights put about 12% of the resized values 1 away from
    /// float bilinear rounded (measured on these images), and a few labels follow.
    func allowedDifferences(width: Int, height: Int, size: Int) -> Int {
        let factor = min(Double(4 * size) / Double(max(width, height)), Double(size) / Double(min(width, height)))
        let resized = Int(Double(width) * factor + 0.5) != width || Int(Double(height) * factor + 0.5) != height
        return 2 + (resized ? width * height / 100 : 0)
    }

    /// Runs `--eval-only` on the weights over one val folder and compares every pred/STEM.png with
    /// mmseg's, pixel for pixel.
    func checkEvalOnly(weights: String, variant: String, run: String, folder: String, size: Int, slide: Bool,
                       file: StaticString = #filePath, line: UInt = #line) throws {
        var o = SegmentOptions()
        o.evalOnly = true
        o.weights = reference(weights)
        o.valImages = reference("mmseg_val/\(folder)/images")
        o.valLabels = reference("mmseg_val/\(folder)/labels")
        o.numClasses = 4
        o.imgSize = size
        o.slide = slide
        o.heads = 4
        o.outDir = try scratchFolder()
        o.verbose = false
        let runs = try runSegment(o)
        XCTAssertEqual(runs.count, 1, file: file, line: line)
        let expectedDir = reference("mmseg_pred/\(variant)/\(run)/\(folder)")
        let stems = try FileManager.default.contentsOfDirectory(atPath: expectedDir.path).filter { $0.hasSuffix(".png") }.sorted()
        XCTAssertFalse(stems.isEmpty, file: file, line: line)
        for stem in stems {
            let expected = try LabelMapCodec.read(contentsOf: expectedDir.appendingPathComponent(stem))
            let actual = try LabelMapCodec.read(contentsOf: runs[0].dir.appendingPathComponent("pred").appendingPathComponent(stem))
            XCTAssertEqual(actual.width, expected.width, "\(run)/\(stem)", file: file, line: line)
            XCTAssertEqual(actual.height, expected.height, "\(run)/\(stem)", file: file, line: line)
            guard actual.labels.count == expected.labels.count else { continue }
            let differing = zip(actual.labels, expected.labels).filter { $0 != $1 }.count
            XCTAssertLessThanOrEqual(differing, allowedDifferences(width: expected.width, height: expected.height, size: size),
                                     "\(variant) \(run) \(stem): \(differing) of \(expected.labels.count) pixels differ from mmseg",
                                     file: file, line: line)
        }
    }

    func testWholeInferenceMatchesMMSegFromSafetensors() throws {
        try checkEvalOnly(weights: "mmseg_upernet_tiny.safetensors", variant: "mmseg_upernet_tiny", run: "whole32",
                          folder: "square", size: 32, slide: false)
    }

    func testSlideInferenceMatchesMMSegFromMMEngineCheckpoint() throws {
        for folder in ["square", "wide"] {
            try checkEvalOnly(weights: "mmseg_upernet_tiny.pth", variant: "mmseg_upernet_tiny", run: "slide32",
                              folder: folder, size: 32, slide: true)
        }
    }

    /// At another size the abs pos_embed is resized at load (bicubic, cls row kept) as mmseg's MAE does.
    func testWholeInferenceAtAnotherSizeMatchesMMSeg() throws {
        try checkEvalOnly(weights: "mmseg_upernet_tiny.pth", variant: "mmseg_upernet_tiny", run: "whole48",
                          folder: "square", size: 48, slide: false)
    }
}
