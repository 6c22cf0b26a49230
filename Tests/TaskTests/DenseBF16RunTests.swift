import Foundation
import MAEData
import MAEKernels
@testable import MAETasks
import TestSupport
import XCTest

/// `segment` and `detect` with `--precision bf16` at toy size: a bf16 run is its own variant (run
/// folder, report section) and its metrics.json, log.jsonl and protocol checks say so, for training
/// and for `--eval-only`.
final class DenseBF16RunTests: XCTestCase {
    private func assertSaysBF16(_ metrics: [String: Any], variant: String, _ what: String,
                                file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(metrics["precision"] as? String, "bf16", what, file: file, line: line)
        XCTAssertEqual(metrics["variant"] as? String, variant, what, file: file, line: line)
        let checks = metrics["protocol_checks"] as? [String] ?? []
        XCTAssertTrue(checks.contains { $0.hasPrefix("bf16:") && $0.contains("convolutions") && $0.contains("stay fp32") },
                      "\(what): \(checks)", file: file, line: line)
    }

    func testSegmentInBF16IsItsOwnVariant() throws {
        let root = try scratchFolder(prefix: "mae-eval-segment-bf16")
        defer { try? FileManager.default.removeItem(at: root) }
        let tiny = try TinySegmentation(root: root, task: try TinyTasks.segmentation(epochs: 1), scenes: (4, 2))
        var o = tiny.options
        o.report = root.appendingPathComponent("runs/segmentation.md")
        o.precision = .bf16
        let run = try XCTUnwrap(try runSegment(o).first)
        XCTAssertEqual(run.dir.deletingLastPathComponent().lastPathComponent, "upernet-bf16")
        assertSaysBF16(try jsonObject(run.metrics), variant: "upernet, bf16", "training")
        XCTAssertEqual(try run.readLogLines().map(\.precision), ["bf16"])
        let report = try String(contentsOf: root.appendingPathComponent("runs/segmentation.md"), encoding: .utf8)
        XCTAssertTrue(report.contains("upernet, bf16"), report)

        var e = tiny.evaluating(run.dir.appendingPathComponent("segmenter.safetensors"))
        e.precision = .bf16
        let evaluated = try runSegment(e)[0]
        XCTAssertEqual(evaluated.dir.deletingLastPathComponent().lastPathComponent, "eval-only-bf16")
        assertSaysBF16(try jsonObject(evaluated.metrics), variant: "eval-only, bf16", "--eval-only")
    }

    func testDetectInBF16IsItsOwnVariant() throws {
        let root = try scratchFolder(prefix: "mae-eval-detect-bf16")
        defer { try? FileManager.default.removeItem(at: root) }
        try ShapesDataset.generate(to: root, size: 16, seed: 3,
                                   counts: ShapesCounts(pretrain: 0, supervised: 0, train: 0, val: 0, scenesTrain: 4, scenesVal: 2),
                                   sceneSize: 32)
        let checkpoint = root.appendingPathComponent("tiny.safetensors")
        try TinyTasks.backbone(at: checkpoint, imgSize: 16, depth: 2, seed: 1)
        let spec = root.appendingPathComponent("tiny-detect.yaml")
        try Data(TinyTasks.detection(root: root, batch: 2, epochs: 1).utf8).write(to: spec)
        var o = DetectOptions()
        o.checkpoints = [checkpoint]
        o.task = spec.path
        o.outDir = root.appendingPathComponent("runs")
        o.report = root.appendingPathComponent("runs/detection.md")
        o.precision = .bf16
        o.verbose = false
        let run = try XCTUnwrap(try runDetect(o).first)
        XCTAssertEqual(run.dir.deletingLastPathComponent().lastPathComponent, "mask-r-cnn-bf16")
        assertSaysBF16(try jsonObject(run.metrics), variant: "Mask R-CNN, bf16", "training")
        XCTAssertEqual(try readJSONLines(DetectEpoch.self, from: run.log).map(\.precision), ["bf16"])
        let report = try String(contentsOf: root.appendingPathComponent("runs/detection.md"), encoding: .utf8)
        XCTAssertTrue(report.contains("Mask R-CNN, bf16"), report)

        var e = DetectOptions()
        e.evalOnly = true
        e.weights = run.dir.appendingPathComponent("detector.safetensors")
        e.task = o.task
        e.heads = 2
        e.outDir = root.appendingPathComponent("eval")
        e.report = nil
        e.precision = .bf16
        e.verbose = false
        let evaluated = try runDetect(e)[0]
        XCTAssertEqual(evaluated.dir.deletingLastPathComponent().lastPathComponent, "eval-only-bf16")
        assertSaysBF16(try jsonObject(evaluated.metrics), variant: "Mask R-CNN, bf16", "--eval-only")
    }
}
