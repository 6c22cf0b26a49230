import Foundation
import MAECOCO
import MAEData
import MAEDense
import MAEFormats
import MAEModels
@testable import MAETasks
import TestSupport
import XCTest

/// `mae-eval detect` end to end at toy size: a 2-block ViT on a few 32 px Shapes scenes, one epoch.
final class DetectTests: XCTestCase {
    /// The shipped Shapes spec shrunk: 32 px scenes, narrow heads, one epoch of batch 2.
    func tinySpec(root: URL) throws -> URL {
        let url = root.appendingPathComponent("tiny-detect.yaml")
        try Data(TinyTasks.detection(root: root, batch: 2, epochs: 1).utf8).write(to: url)
        return url
    }

    func testTrainEvaluateAndReloadInDetectronLayout() throws {
        let root = try scratchFolder()
        try ShapesDataset.generate(to: root, size: 16, seed: 3,
                                   counts: ShapesCounts(pretrain: 0, supervised: 0, train: 0, val: 0, scenesTrain: 4, scenesVal: 2),
                                   sceneSize: 32)
        let checkpoint = root.appendingPathComponent("tiny.safetensors")
        try TinyTasks.backbone(at: checkpoint, imgSize: 16, depth: 2, seed: 1)
        var o = DetectOptions()
        o.checkpoints = [checkpoint]
        o.task = try tinySpec(root: root).path
        o.outDir = root.appendingPathComponent("runs")
        o.report = root.appendingPathComponent("runs/detection.md")
        o.verbose = false
        let runs = try runDetect(o)
        XCTAssertEqual(runs.count, 1)
        let dir = runs[0].dir
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("metrics.json"))) as! [String: Any]
        let bbox = try XCTUnwrap(metrics["bbox"] as? [String: Double]), segm = try XCTUnwrap(metrics["segm"] as? [String: Double])
        XCTAssertEqual(Set(bbox.keys), Set(cocoStatNames))
        XCTAssertEqual(Set(segm.keys), Set(cocoStatNames))
        XCTAssertEqual(metrics["protocol"] as? String, "detect")
        // metrics.json is COCO AP of the run's own detections.json.
        let gtURL = root.appendingPathComponent("scenes_val/instances.json")
        let results = try COCODetection.load(contentsOf: dir.appendingPathComponent("detections.json"))
        let again = try cocoMetrics(groundTruth: try COCODataset(contentsOf: gtURL), results: results, groundTruthFile: "gt")
        for name in cocoStatNames {
            XCTAssertEqual(again.bbox[name]!, bbox[name]!, accuracy: 1e-9, "bbox \(name)")
            XCTAssertEqual(again.segm[name]!, segm[name]!, accuracy: 1e-9, "segm \(name)")
        }
        // log.jsonl: one epoch with every loss term.
        let log = try String(contentsOf: dir.appendingPathComponent("log.jsonl"), encoding: .utf8)
        for term in ["loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg", "loss_mask"] { XCTAssertTrue(log.contains(term), term) }
        XCTAssertEqual(log.split(separator: "\n").count, 1)
        XCTAssertTrue(FileManager.default.fileExists(atPath: root.appendingPathComponent("runs/detection.md").path))
        // The saved detector is in detectron2's names; evaluated with --eval-only it gives the same numbers.
        let detector = dir.appendingPathComponent("detector.safetensors")
        let file = try CheckpointFile.open(detector)
        XCTAssertNotNil(file.tensors["backbone.net.blocks.0.attn.qkv.weight"])
        XCTAssertNotNil(file.tensors["proposal_generator.rpn_head.objectness_logits.weight"])
        XCTAssertNotNil(file.tensors["roi_heads.box_predictor.cls_score.weight"])
        var e = DetectOptions()
        e.evalOnly = true
        e.weights = detector
        e.task = o.task
        e.heads = 2
        e.outDir = root.appendingPathComponent("eval")
        e.report = nil
        e.verbose = false
        let evaluated = try runDetect(e)
        let m2 = try JSONSerialization.jsonObject(with: Data(contentsOf: evaluated[0].dir.appendingPathComponent("metrics.json"))) as! [String: Any]
        XCTAssertEqual(m2["bbox"] as? [String: Double], bbox)
        XCTAssertEqual(m2["segm"] as? [String: Double], segm)
    }
}
