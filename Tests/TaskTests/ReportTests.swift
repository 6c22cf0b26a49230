import XCTest
@testable import MAETasks
import TestSupport

/// The report of any task: classification exactly as before, and sections for detection and
/// segmentation runs, each with its named metrics, the delta and the paper's anchors.
final class ReportTests: XCTestCase {
    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }

    func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("report-\(UUID())")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

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
        let root = try temporaryFolder()
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
}
