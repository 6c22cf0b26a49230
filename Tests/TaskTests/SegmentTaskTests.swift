import Foundation
import MAEData
import MAEFormats
import MAEModels
import MAEMetrics
@testable import MAETasks
import TestSupport
import XCTest

/// `mae-eval segment` end to end on a few tiny Shapes scenes: training through the shared loop,
/// metrics.json equal to the metrics of its pred/ maps, the saved mmseg-layout segmenter evaluated
/// again through --eval-only, resume, and the specs.
final class SegmentTaskTests: XCTestCase {
    func testShippedSpecsParseAndUnknownFieldsAreRefused() throws {
        for name in ["shapes-segment", "shapes-segment-linear", "ade20k-upernet"] {
            let spec = try SegmentSpec.load(repositoryRoot.appendingPathComponent("Tasks/\(name).yaml").path)
            XCTAssertEqual(spec.name, name)
            XCTAssertEqual(spec.classNames.count, spec.dataset.numClasses, name)
        }
        let ade = try SegmentSpec.load(repositoryRoot.appendingPathComponent("Tasks/ade20k-upernet.yaml").path)
        XCTAssertEqual([ade.classNames[0], ade.classNames[7], ade.classNames[44], ade.classNames[149]],
                       ["wall", "bed", "chest of drawers", "flag"])   // mmseg's ADE20KDataset classes ('bed ' stripped)
        let text = try String(contentsOf: repositoryRoot.appendingPathComponent("Tasks/shapes-segment.yaml"), encoding: .utf8)
        XCTAssertThrowsError(try SegmentSpec.parse(text.replacingOccurrences(of: "  crop: 64", with: "  crop: 64\n  cropp: 3"),
                                                   source: "x.yaml")) { error in
            XCTAssertTrue("\(error)".contains("unknown field 'dataset.cropp'"), "\(error)")
        }
        XCTAssertThrowsError(try SegmentSpec.parse(text.replacingOccurrences(of: "type: upernet", with: "type: deeplab"), source: "x.yaml"))
    }

    /// mmseg's slide grid: 512-wide image, crop 512 -> one window; 683 wide, stride 341 -> two, the last clamped.
    func testSlideWindows() {
        XCTAssertEqual(SegmentationInference.windows(size: 512, crop: 512, stride: 341), [0..<512])
        XCTAssertEqual(SegmentationInference.windows(size: 683, crop: 512, stride: 341), [0..<512, 171..<683])
        XCTAssertEqual(SegmentationInference.windows(size: 300, crop: 512, stride: 341), [0..<300])
    }

    func testTrainEvaluateReloadAndResume() throws {
        let root = try scratchFolder(prefix: "mae-eval-segment")
        defer { try? FileManager.default.removeItem(at: root) }
        let tiny = try TinySegmentation(root: root, task: try TinyTasks.segmentation(epochs: 1), scenes: (8, 3))
        var o = tiny.options
        o.report = root.appendingPathComponent("runs/segmentation.md")
        let runs = try runSegment(o)
        XCTAssertEqual(runs.count, 1)
        let run = runs[0]
        let mIoU = try XCTUnwrap(try jsonObject(run.metrics)["mIoU"] as? Double)
        XCTAssertEqual(try run.readLogLines().count, 1)
        // metrics.json is the metrics of the written pred/ maps.
        let val = root.appendingPathComponent("shapes/scenes_val")
        let recomputed = try SegmentationMetrics.evaluateDirectories(
            groundTruth: ShapesPaths.sceneClassMaps(val), predictions: run.dir.appendingPathComponent("pred"), numClasses: 11) { url in
                let m = try LabelMapCodec.read(contentsOf: url)
                return (m.width, m.height, m.labels)
            }
        XCTAssertEqual(recomputed.images, 3)
        XCTAssertEqual(recomputed.result.mIoU, mIoU, accuracy: 1e-9)
        XCTAssertTrue(FileManager.default.fileExists(atPath: run.dir.appendingPathComponent("overlays").path))
        XCTAssertTrue(FileManager.default.fileExists(atPath: root.appendingPathComponent("runs/segmentation.md").path))
        // The saved segmenter (mmseg names) evaluates to the same numbers through --eval-only.
        let saved = try SafeTensors.read(contentsOf: run.dir.appendingPathComponent("segmenter.safetensors"))
        XCTAssertNotNil(saved.tensors["backbone.layers.3.ffn.layers.1.weight"])
        XCTAssertNotNil(saved.tensors["decode_head.psp_modules.3.1.bn.running_var"])
        XCTAssertNotNil(saved.tensors["auxiliary_head.convs.0.conv.weight"])
        var e = tiny.evaluating(run.dir.appendingPathComponent("segmenter.safetensors"))
        let evaluated = try runSegment(e)[0]
        XCTAssertEqual(try XCTUnwrap(try jsonObject(evaluated.metrics)["mIoU"] as? Double), mIoU, accuracy: 1e-9)
        // A resume restores the weights and BN statistics (the finished run evaluates the same);
        // another recipe is refused.
        o.resume = true
        _ = try runSegment(o)
        XCTAssertEqual(try run.readLogLines().map(\.epoch), [1])
        XCTAssertEqual(try XCTUnwrap(try jsonObject(run.metrics)["mIoU"] as? Double), mIoU, accuracy: 1e-9)
        o.epochs = 2
        XCTAssertThrowsError(try runSegment(o)) { XCTAssertTrue("\($0)".contains("cannot be resumed"), "\($0)") }
        e.numClasses = 5
        XCTAssertThrowsError(try runSegment(e)) { XCTAssertTrue("\($0)".contains("predicts 11 classes"), "\($0)") }
    }
}

extension SegmentTaskTests {
    /// An ADE20K-layout folder pair unlike Shapes (JPEG texture mosaics, 96 x 72, label 0 on the seams;
    /// scripts/make_texture_ade.py): --reduce-zero-label ignores 0 and shifts the rest down, pred/ holds
    /// the maps in the annotation's label space (class c written c + 1) at the annotation's size,
    /// metrics.json is their metrics and names the user's folder as the dataset.
    func testADELayoutFoldersWithReduceZeroLabel() throws {
        let root = try scratchFolder(prefix: "mae-eval-segment-ade")
        defer { try? FileManager.default.removeItem(at: root) }
        let ade = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/texture_ade", withExtension: nil))
        let task = root.appendingPathComponent("tiny.yaml")
        // mmseg's default pyramid here (the Shapes spec uses the other one).
        try TinyTasks.setting(try TinyTasks.segmentation(epochs: 1), ["  rescales": "[4, 2, 1, 0.5]"])
            .write(to: task, atomically: true, encoding: .utf8)
        let backbone = root.appendingPathComponent("tiny_mae.safetensors")
        try TinyTasks.backbone(at: backbone)
        var o = SegmentOptions()
        o.checkpoints = [backbone]
        o.task = task.path
        o.trainImages = ade.appendingPathComponent("images/training")
        o.trainLabels = ade.appendingPathComponent("annotations/training")
        o.valImages = ade.appendingPathComponent("images/validation")
        o.valLabels = ade.appendingPathComponent("annotations/validation")
        o.numClasses = 6
        o.reduceZeroLabel = true
        o.outDir = root.appendingPathComponent("runs")
        o.report = nil
        o.verbose = false
        let run = try runSegment(o)[0]
        let metrics = try jsonObject(run.metrics)
        XCTAssertEqual(metrics["num_classes"] as? Int, 6)
        XCTAssertEqual(metrics["reduce_zero_label"] as? Bool, true)
        XCTAssertNotNil(try SafeTensors.read(contentsOf: run.dir.appendingPathComponent("segmenter.safetensors")).tensors["neck.upsample_4x.0.weight"])
        let dataset = try XCTUnwrap(metrics["dataset"] as? String)
        XCTAssertTrue(dataset.hasPrefix(o.trainImages!.path + ", 6 train / 3 val images"), dataset)
        let pred = run.dir.appendingPathComponent("pred")
        let stems = try FileManager.default.contentsOfDirectory(atPath: pred.path).sorted()
        XCTAssertEqual(stems, ["tex_val_000000.png", "tex_val_000001.png", "tex_val_000002.png"])
        for stem in stems {
            let map = try LabelMapCodec.read(contentsOf: pred.appendingPathComponent(stem))
            XCTAssertEqual([map.width, map.height], [96, 72], stem)
            XCTAssertTrue(map.labels.allSatisfy { (1...6).contains($0) }, "\(stem): labels outside 1...6")
        }
        // In the annotation's label space the seams (0) are the ignored label and classes 1...6 are
        // scored; class 0 is then never predicted nor labelled, so its NaN drops out of the means
        // (`mae-eval seg-eval --num-classes 7 --ignore-index 0` on pred/).
        let recomputed = try SegmentationMetrics.evaluateDirectories(
            groundTruth: o.valLabels!, predictions: pred, numClasses: 7, ignoreIndex: 0) { url in
                let m = try LabelMapCodec.read(contentsOf: url)
                return (m.width, m.height, m.labels)
            }
        XCTAssertEqual(recomputed.images, 3)
        XCTAssertEqual(recomputed.result.mIoU, try XCTUnwrap(metrics["mIoU"] as? Double), accuracy: 1e-9)
        XCTAssertEqual(recomputed.result.aAcc, try XCTUnwrap(metrics["aAcc"] as? Double), accuracy: 1e-9)
    }
}

extension SegmentTaskTests {
    /// A spec's `head.rescales: [2, 1, 0.5, 0.25]` (mmseg's other Feature2Pyramid) trains, says so in
    /// the recipe, and its saved segmenter (no `neck.upsample_4x`) is rebuilt with that pyramid by
    /// --eval-only and evaluates to the same numbers; other rescales are refused.
    func testQuarterPyramidTrainsAndReloads() throws {
        let root = try scratchFolder(prefix: "mae-eval-segment-quarter")
        defer { try? FileManager.default.removeItem(at: root) }
        let text = try TinyTasks.segmentation(epochs: 1)
        let quarter = try TinyTasks.setting(text, ["  rescales": "[2, 1, 0.5, 0.25]"])
        let tiny = try TinySegmentation(root: root, task: quarter, scenes: (8, 3))
        let run = try runSegment(tiny.options)[0]
        let metrics = try jsonObject(run.metrics)
        XCTAssertTrue((metrics["recipe"] as? String)?.contains("Feature2Pyramid rescales [2, 1, 0.5, 0.25]") == true, "\(metrics["recipe"] ?? "")")
        let saved = try SafeTensors.read(contentsOf: run.dir.appendingPathComponent("segmenter.safetensors"))
        XCTAssertNil(saved.tensors["neck.upsample_4x.0.weight"])
        XCTAssertNotNil(saved.tensors["neck.upsample_2x.0.weight"])
        let evaluated = try runSegment(tiny.evaluating(run.dir.appendingPathComponent("segmenter.safetensors")))[0]
        XCTAssertEqual(try XCTUnwrap(try jsonObject(evaluated.metrics)["mIoU"] as? Double),
                       try XCTUnwrap(metrics["mIoU"] as? Double), accuracy: 1e-9)
        XCTAssertThrowsError(try SegmentSpec.parse(TinyTasks.setting(text, ["  rescales": "[4, 2, 1, 0.25]"]),
                                                   source: "x.yaml")) { error in
            XCTAssertTrue("\(error)".contains("head.rescales must be [4, 2, 1, 0.5] or [2, 1, 0.5, 0.25]"), "\(error)")
        }
    }
}

/// A JSON file's top-level object.
func jsonObject(_ url: URL) throws -> [String: Any] {
    try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any], url.path)
}

extension TransferRun {
    /// The segmentation run's log.
    func readLogLines() throws -> [SegmentEpoch] { try readJSONLines(SegmentEpoch.self, from: log) }
}
