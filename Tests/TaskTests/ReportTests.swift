import XCTest
@testable import MAETasks
import TestSupport

/// The report of any task: classification exactly as before, and sections for detection and
/// segmentation runs, each with its named metrics, the delta and the paper's anchors.
final class ReportTests: XCTestCase {
    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }


    /// A classification run: every protocol the report orders, shared and backbone-specific checks,
    /// selected hyperparameters, several seeds, curves.
    func classificationRun(_ root: URL, task: String, evaluation: String, variant: String, checkpoint: String,
                           method: String, role: String, seed: UInt64, top1: Double, top5: Double,
                           selected: [String: Double]? = nil, log: Bool = true) throws {
        let folder = variant.map { $0.isLetter || $0.isNumber ? $0 : "-" }
        let run = TransferRun(dir: root.appendingPathComponent("\(task)/\(String(folder))/\(checkpoint)-s\(seed)"))
        let metrics = TransferMetrics(
            task: task, evaluation: evaluation, variant: variant, checkpoint: "Checkpoints/\(checkpoint).safetensors",
            checkpointHash: checkpoint, method: method, role: role, top1: top1, top5: top5, seed: seed,
            recipe: "\(evaluation) recipe", dataset: "shapes", trainData: "data/train", valData: "data/val",
            trainImages: 4000, valImages: 2000, classes: 10, pooling: "cls", selected: selected, grid: nil,
            protocolChecks: ["backbone frozen", "feature: \(method == "mae" ? "cls" : "avg")"],
            timings: ["total_s": 10 + Double(seed)], epochs: 3, created: "now")
        let epochs = log ? (1...3).map {
            TransferEpoch(epoch: $0, trainLoss: 2 / Double($0), lr: 0.1, valTop1: evaluation == "knn" ? nil : top1 - Double(3 - $0), seconds: 1)
        } : []
        try run.write(metrics, log: epochs)
    }

    /// Runs of the three classification protocols, written in an order the report must not follow.
    func classificationRuns(_ root: URL) throws {
        try classificationRun(root, task: "shapes-finetune", evaluation: "finetune", variant: "full", checkpoint: "mae_shapes",
                              method: "mae", role: "checkpoint", seed: 0, top1: 82.95, top5: 99.5)
        try classificationRun(root, task: "shapes-finetune", evaluation: "finetune", variant: "full", checkpoint: "supervised_shapes",
                              method: "supervised", role: "baseline", seed: 0, top1: 72.1, top5: 98.25)
        try classificationRun(root, task: "shapes-finetune", evaluation: "finetune", variant: "last 1 blocks", checkpoint: "mae_shapes",
                              method: "mae", role: "checkpoint", seed: 0, top1: 53.85, top5: 95)
        try classificationRun(root, task: "shapes-knn", evaluation: "knn", variant: "k 20, T 0.07, cls", checkpoint: "mae_shapes",
                              method: "mae", role: "checkpoint", seed: 0, top1: 23.55, top5: 70, log: false)
        try classificationRun(root, task: "shapes-knn", evaluation: "knn", variant: "k 20, T 0.07, cls", checkpoint: "supervised_shapes",
                              method: "supervised", role: "baseline", seed: 0, top1: 73.85, top5: 97, log: false)
        for seed: UInt64 in [0, 1, 2] {
            try classificationRun(root, task: "shapes-linprobe", evaluation: "linprobe", variant: "cached, cls", checkpoint: "mae_shapes",
                                  method: "mae", role: "checkpoint", seed: seed, top1: 42.4 + Double(seed), top5: 90,
                                  selected: ["lr": 0.3, "weight_decay": 0.001])
        }
        try classificationRun(root, task: "shapes-linprobe", evaluation: "linprobe", variant: "cached, cls", checkpoint: "other_mae",
                              method: "mae", role: "checkpoint", seed: 0, top1: 40, top5: 88, selected: ["lr": 0.1, "weight_decay": 0])
        for seed: UInt64 in [0, 1] {
            try classificationRun(root, task: "shapes-linprobe", evaluation: "linprobe", variant: "cached, cls", checkpoint: "supervised_shapes",
                                  method: "supervised", role: "baseline", seed: seed, top1: 75.05 - Double(seed) / 2, top5: 99.55,
                                  selected: ["lr": 0.3, "weight_decay": 0.01])
        }
    }

    /// The same classification runs render byte for byte as the report did before it could hold
    /// other tasks (the fixture is that code's output; the runs folder's path is written `RUNS`).
    func testClassificationReportIsByteIdenticalToTheClassificationOnlyReport() throws {
        let root = try scratchFolder()
        let runs = root.appendingPathComponent("runs")
        try classificationRuns(runs)
        let out = root.appendingPathComponent("Reports/classification.md")
        try writeReport(runs: runs, to: out)
        let markdown = try String(contentsOf: out, encoding: .utf8).replacingOccurrences(of: runs.path, with: "RUNS")
        let expected = try String(contentsOf: fixture("report_classification.md"), encoding: .utf8)
        XCTAssertEqual(markdown, expected)
        let figures = try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("Reports/classification-figures").path)
        XCTAssertEqual(figures.sorted(), [
            "shapes-finetune-finetune-full-loss.png", "shapes-finetune-finetune-full-val.png",
            "shapes-finetune-finetune-last-1-blocks-loss.png", "shapes-finetune-finetune-last-1-blocks-val.png",
            "shapes-linprobe-linprobe-cached-cls-loss.png", "shapes-linprobe-linprobe-cached-cls-val.png",
        ])
    }

    /// A run folder holding `object` as its metrics.json (as `detect` and `segment` will write them).
    @discardableResult
    func denseRun(_ root: URL, _ path: String, _ object: [String: Any]) throws -> URL {
        let dir = root.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let url = dir.appendingPathComponent("metrics.json")
        try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]).write(to: url)
        return url
    }

    /// The 12 COCO numbers by name, AP = `ap` and the others derived from it.
    func coco(_ ap: Double) -> [String: Double] {
        let names = ["AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]
        return Dictionary(uniqueKeysWithValues: names.enumerated().map { ($1, ap + Double($0)) })
    }

    func detectionRun(_ root: URL, checkpoint: String, method: String, role: String, seed: UInt64, box: Double, mask: Double) throws -> URL {
        try denseRun(root, "coco-detect/mask-r-cnn/\(checkpoint)-s\(seed)", [
            "task": "coco-mini", "protocol": "detect", "variant": "Mask R-CNN", "checkpoint": "Checkpoints/\(checkpoint).safetensors",
            "checkpoint_hash": checkpoint, "method": method, "role": role, "seed": seed, "recipe": "ViTDet recipe",
            "dataset": "coco-mini", "bbox": coco(box), "segm": coco(mask), "timings": ["total_s": 20],
        ])
    }

    func segmentationRun(_ root: URL, checkpoint: String, method: String, seed: UInt64, mIoU: Double) throws {
        try denseRun(root, "ade-segment/upernet/\(checkpoint)-s\(seed)", [
            "task": "ade-mini", "protocol": "segment", "variant": "UperNet", "checkpoint": "Checkpoints/\(checkpoint).safetensors",
            "method": method, "seed": seed, "mIoU": mIoU, "mAcc": mIoU + 10, "aAcc": mIoU + 30,
            "per_class": ["disc": ["IoU": mIoU - 5, "Acc": mIoU], "ring": ["IoU": method == "mae" ? NSNull() : 10.0, "Acc": 0.0]],
            "timings": ["total_s": 30],
        ])
    }

    /// Detection runs get their own section: APbox and APmask (and AP50/AP75) with MAE, supervised,
    /// every metric's delta and the paper's Table 4.
    func testDetectionRunsRenderTheirOwnSection() throws {
        let root = try scratchFolder()
        let runs = root.appendingPathComponent("runs")
        let first = try detectionRun(runs, checkpoint: "mae_b", method: "mae", role: "checkpoint", seed: 0, box: 40, mask: 35)
        _ = try detectionRun(runs, checkpoint: "mae_b", method: "mae", role: "checkpoint", seed: 1, box: 42, mask: 36)
        _ = try detectionRun(runs, checkpoint: "sup_b", method: "supervised", role: "baseline", seed: 0, box: 38, mask: 34)
        // The run's prediction figures are copied next to the report and embedded.
        let figureDir = first.deletingLastPathComponent().appendingPathComponent("figures")
        try FileManager.default.createDirectory(at: figureDir, withIntermediateDirectories: true)
        for id in ["12", "3", "40"] { try Data("png \(id)".utf8).write(to: figureDir.appendingPathComponent("\(id).png")) }
        let (md, figures) = try renderReport(runs: runs, figuresFolder: "f")
        XCTAssertTrue(md.contains("Predictions (left: ground truth; right: detections):\n\n- mae_b, seed 0: " +
                                  "![mae_b 3.png](f/coco-mini-mask-r-cnn-mae-b-s0-3.png) ![mae_b 12.png](f/coco-mini-mask-r-cnn-mae-b-s0-12.png)\n"), md)
        XCTAssertEqual(figures.map(\.0), ["coco-mini-mask-r-cnn-mae-b-s0-3.png", "coco-mini-mask-r-cnn-mae-b-s0-12.png"])
        let out = first.deletingLastPathComponent().appendingPathComponent("copy.png")
        try figures[1].1.write(to: out)
        XCTAssertEqual(try Data(contentsOf: out), Data("png 12".utf8))
        XCTAssertTrue(md.hasPrefix("# Detection transfer: MAE vs supervised backbones\n"), md)
        XCTAssertTrue(md.contains("Detection numbers are COCO box and mask AP in percent on the val split; with several seeds"), md)
        XCTAssertTrue(md.contains("| task | protocol | MAE APbox | supervised APbox | Δ APbox | MAE APmask | supervised APmask | Δ APmask | " +
                                  "MAE paper | supervised paper |\n|---|---|---|---|---|---|---|---|---|---|\n"), md)
        XCTAssertTrue(md.contains("| coco-mini | detect (Mask R-CNN) | 41.00 ± 1.41 | 38.00 | +3.00 | 35.50 ± 0.71 | 34.00 | +1.50 | " +
                                  "APbox 50.3 (ViT-B Mask R-CNN, Table 4) / APmask 44.9 (ViT-B Mask R-CNN, Table 4) | " +
                                  "APbox 47.9 (ViT-B Mask R-CNN, Table 4) / APmask 42.9 (ViT-B Mask R-CNN, Table 4) |\n"), md)
        XCTAssertTrue(md.contains("## coco-mini: detect, Mask R-CNN\n\nData: coco-mini.\n\n"), md)
        // Rows are metrics, columns the backbones and the delta: narrow enough to read.
        XCTAssertTrue(md.contains("| metric | mae_b (mae) | sup_b (supervised, baseline) | Δ mae_b − sup_b |\n|---|---|---|---|\n" +
                                  "| APbox | 41.00 ± 1.41 | 38.00 | +3.00 |\n| APbox50 | 42.00 ± 1.41 | 39.00 | +3.00 |\n"), md)
        XCTAssertTrue(md.contains("| APmask75 | 37.50 ± 0.71 | 36.00 | +1.50 |\n| APbox S | 44.00 ± 1.41 | 41.00 | +3.00 |\n" +
                                  "| APbox M | 45.00 ± 1.41 | 42.00 | +3.00 |\n| APbox L | 46.00 ± 1.41 | 43.00 | +3.00 |\n\n" +
                                  "Seeds: mae_b 0, 1; sup_b 0. Time (s): mae_b 20.0; sup_b 20.0.\n"), md)
        XCTAssertTrue(md.contains("Reference (MAE paper): APbox MAE 50.3 (ViT-B Mask R-CNN, Table 4), supervised 47.9 (ViT-B Mask R-CNN, Table 4); " +
                                  "APmask MAE 44.9 (ViT-B Mask R-CNN, Table 4), supervised 42.9 (ViT-B Mask R-CNN, Table 4).\n"), md)
        XCTAssertTrue(md.contains("Recipe: ViTDet recipe.\n"), md)
        XCTAssertFalse(md.contains("Protocol checks"), "no checks recorded, none listed")
    }

    /// Segmentation runs: mIoU is the summary's metric; mAcc and aAcc are in the section with their
    /// deltas; the paper's Table 5; a run without role or hash is a checkpoint of its own.
    func testSegmentationRunsRenderTheirOwnSection() throws {
        let root = try scratchFolder()
        let runs = root.appendingPathComponent("runs")
        try segmentationRun(runs, checkpoint: "mae_b", method: "mae", seed: 0, mIoU: 30)
        try segmentationRun(runs, checkpoint: "sup_b", method: "supervised", seed: 0, mIoU: 28.5)
        let md = try renderReport(runs: runs, figuresFolder: "f").markdown
        XCTAssertTrue(md.hasPrefix("# Segmentation transfer: MAE vs supervised backbones\n"), md)
        XCTAssertTrue(md.contains("| task | protocol | MAE mIoU | supervised mIoU | Δ (MAE − sup.) | MAE paper | supervised paper |\n"), md)
        XCTAssertTrue(md.contains("| ade-mini | segment (UperNet) | 30.00 | 28.50 | +1.50 | 48.1 (ViT-B UperNet, Table 5) | " +
                                  "47.4 (ViT-B UperNet, Table 5) |\n"), md)
        XCTAssertTrue(md.contains("| metric | mae_b (mae) | sup_b (supervised) | Δ mae_b − sup_b |\n|---|---|---|---|\n" +
                                  "| mIoU | 30.00 | 28.50 | +1.50 |\n| mAcc | 40.00 | 38.50 | +1.50 |\n| aAcc | 60.00 | 58.50 | +1.50 |\n"), md)
        // Per-class IoU per backbone with deltas; a class without pixels (null) is a dash.
        XCTAssertTrue(md.contains("Per-class IoU (percent; — where a class has no pixels in prediction or label):\n\n" +
                                  "| class | mae_b (mae) | sup_b (supervised) | Δ mae_b − sup_b |\n"), md)
        XCTAssertTrue(md.contains("| disc | 25.00 | 23.50 | +1.50 |\n"), md)
        XCTAssertTrue(md.contains("| ring | — | 10.00 | — |\n"), md)
        XCTAssertTrue(md.contains("Reference (MAE paper): MAE 48.1 (ViT-B UperNet, Table 5); supervised 47.4 (ViT-B UperNet, Table 5).\n"), md)
    }

    /// Classification, detection and segmentation runs in one folder: a summary table per kind in
    /// that order, the classification table and sections as they are alone.
    func testMixedRunsGetASummaryPerKindAndClassificationStaysAsItIs() throws {
        let root = try scratchFolder()
        let runs = root.appendingPathComponent("runs")
        try classificationRuns(runs)
        let alone = try renderReport(runs: runs, figuresFolder: "f").markdown
        _ = try detectionRun(runs, checkpoint: "mae_b", method: "mae", role: "checkpoint", seed: 0, box: 40, mask: 35)
        try segmentationRun(runs, checkpoint: "mae_b", method: "mae", seed: 0, mIoU: 30)
        let md = try renderReport(runs: runs, figuresFolder: "f").markdown
        XCTAssertTrue(md.hasPrefix("# Transfer: MAE vs supervised backbones\n"), md)
        XCTAssertTrue(md.contains("Accuracies are top-1 / top-5 in percent on the val split; Detection numbers"), md)
        let headings = md.split(separator: "\n").filter { $0.hasPrefix("#") }.map(String.init)
        XCTAssertEqual(headings, [
            "# Transfer: MAE vs supervised backbones", "## Summary", "### Classification transfer", "### Detection transfer",
            "### Segmentation transfer", "## shapes-linprobe: linprobe, cached, cls", "## shapes-knn: knn, k 20, T 0.07, cls",
            "## shapes-finetune: finetune, full", "## shapes-finetune: finetune, last 1 blocks", "## coco-mini: detect, Mask R-CNN",
            "## ade-mini: segment, UperNet",
        ])
        // The classification summary and sections are the same text as in a classification-only report.
        let summary = { (text: String) in text.components(separatedBy: "| task | protocol | MAE top-1")[1].components(separatedBy: "\n\n")[0] }
        XCTAssertEqual(summary(md), summary(alone))
        let classificationSections = { (text: String) in
            text.components(separatedBy: "## shapes-linprobe: ")[1].components(separatedBy: "## coco-mini")[0]
        }
        XCTAssertEqual(classificationSections(md), alone.components(separatedBy: "## shapes-linprobe: ")[1])
        XCTAssertTrue(md.contains("| coco-mini | detect (Mask R-CNN) | 40.00 | — | — | 35.00 | — | — | APbox 50.3"), "no supervised run, no delta")
    }

    /// A detection run missing its mask numbers, or one of the AP numbers, is named, not skipped.
    func testIncompleteDetectionMetricsAreNamed() throws {
        let root = try scratchFolder()
        let url = try detectionRun(root, checkpoint: "mae_b", method: "mae", role: "checkpoint", seed: 0, box: 40, mask: 35)
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        object["segm"] = nil
        try JSONSerialization.data(withJSONObject: object).write(to: url)
        XCTAssertThrowsError(try renderReport(runs: root, figuresFolder: "f")) { e in
            XCTAssertEqual("\(e)", "\(url.path) lacks the field 'segm', so the report cannot include its run.")
        }
        var box = coco(40)
        box["AP75"] = nil
        object["segm"] = coco(35)
        object["bbox"] = box
        try JSONSerialization.data(withJSONObject: object).write(to: url)
        XCTAssertThrowsError(try renderReport(runs: root, figuresFolder: "f")) { e in
            XCTAssertEqual("\(e)", "\(url.path) lacks the field 'bbox.AP75', so the report cannot include its run.")
        }
        object["bbox"] = coco(40)
        object["method"] = nil
        try JSONSerialization.data(withJSONObject: object).write(to: url)
        XCTAssertThrowsError(try renderReport(runs: root, figuresFolder: "f")) { e in
            XCTAssertEqual("\(e)", "\(url.path) lacks the field 'method', so the report cannot include its run.")
        }
    }

    func testAnEmptyRunsFolderSaysHowToMakeRuns() throws {
        let root = try scratchFolder()
        let md = try renderReport(runs: root, figuresFolder: "f").markdown
        XCTAssertEqual(md, "# Classification transfer: MAE vs supervised backbones\n\nGenerated by `mae-eval report` from the runs under " +
                       "`\(root.path)/` (each run folder holds `metrics.json` and `log.jsonl`). Accuracies are top-1 / top-5 in percent " +
                       "on the val split; with several seeds, mean ± sample std.\n\nNo runs yet: run `mae-eval linprobe`, `mae-eval knn` " +
                       "or `mae-eval finetune`.\n")
    }

    /// The caller writes the report once, after the task's runs; `--no-report` (nil) and a task that
    /// throws write none.
    func testRunAndReportWritesTheReportOnceAfterTheRuns() throws {
        let root = try scratchFolder()
        var o = TransferOptions()
        o.outDir = root.appendingPathComponent("runs")
        o.report = root.appendingPathComponent("out/report.md")
        var reportExistedDuringTask = true
        let runs = try runAndReport(o) {
            reportExistedDuringTask = FileManager.default.fileExists(atPath: o.report!.path)
            try classificationRuns(o.outDir)
            return [TransferRun(dir: o.outDir)]
        }
        XCTAssertEqual(runs.map(\.dir), [o.outDir])
        XCTAssertFalse(reportExistedDuringTask)
        XCTAssertEqual(try String(contentsOf: o.report!, encoding: .utf8),
                       try renderReport(runs: o.outDir, figuresFolder: "report-figures").markdown)

        let other = root.appendingPathComponent("other.md")
        o.report = other
        struct Stop: Error {}
        XCTAssertThrowsError(try runAndReport(o) { throw Stop() })
        XCTAssertFalse(FileManager.default.fileExists(atPath: other.path), "a failed task writes no report")
        o.report = nil
        _ = try runAndReport(o) { [] }
        XCTAssertFalse(FileManager.default.fileExists(atPath: other.path), "--no-report writes none")
    }
}
