import Foundation
@testable import MAETasks
import XCTest

/// The transfer report's dense rows on synthetic runs: UperNet and the linear probe as their own
/// summary rows (mIoU, the paper's Table 5 only for UperNet), each delta with its bootstrap interval
/// from the per-image areas.
final class DenseTransferReportTests: XCTestCase {
    func testSegmentationRowsCarryTheirAnchorsAndIntervals() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-dense-report-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        var units: [ReportedUnit] = []
        for (variant, shift) in [("upernet", 0.0), ("linear, last 1 blocks", -4.0)] {
            let task = PlannedTask(protocolName: "segment", spec: root.appendingPathComponent("\(variant).yaml"),
                                   name: "shapes-segment\(shift < 0 ? "-linear" : "")", hash: "0123456789abcdef", seeds: [0])
            for (method, role, good) in [("mae", "checkpoint", 3.0), ("supervised", "baseline", 1.0)] {
                let dir = root.appendingPathComponent("\(task.name)/\(method)")
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                let metrics: [String: Any] = ["task": task.name, "protocol": "segment", "variant": variant,
                                              "checkpoint": "Checkpoints/\(method)_b.safetensors", "method": method, "role": role, "seed": 0,
                                              "mIoU": 40 + good + shift, "mAcc": 50.0, "aAcc": 70.0]
                try JSONSerialization.data(withJSONObject: metrics, options: [.sortedKeys]).write(to: dir.appendingPathComponent("metrics.json"))
                let run = try XCTUnwrap(try readReportRun(dir.appendingPathComponent("metrics.json")))
                // 30 images, 2 classes: the MAE backbone's class 1 intersections are larger on every image.
                let images = (0..<30).map { "img\($0)" }
                let intersect = (0..<30).map { n in [8.0, good + Double(n % 4)] }
                let statistic = SegmentationStatistic(images: images, intersect: intersect, union: images.map { _ in [10.0, 10.0] },
                                                      labelArea: images.map { _ in [9.0, 8.0] })
                let unit = TransferUnit(index: units.count, task: task, backbone: Backbone(url: URL(fileURLWithPath: "/c/\(method)_b.safetensors"), role: role),
                                        backboneHash: method, seed: 0)
                let record = UnitRecord(runDir: "\(task.name)/\(method)", task: task.name, taskHash: task.hash, evaluation: "segment",
                                        checkpoint: "/c/\(method)_b.safetensors", checkpointHash: method, role: role, seed: 0, seconds: 1)
                units.append(ReportedUnit(unit: unit, record: record, run: run, statistic: statistic, dir: run.run.dir))
            }
        }
        var settings = BootstrapSettings()
        settings.resamples = 200
        let sections = transferSections(units)
        let deltas = try sections.map { try sectionDeltas($0, units: units, settings: settings) }
        let (md, _) = try renderTransferReport(units, sections: sections, deltas: deltas, settings: settings, figuresFolder: "f")
        // The statistic's own mIoU delta: class 1's IoU gains 2 / 10 on every image, class 0 is equal.
        let upernet = try XCTUnwrap(deltas[0].first { $0.metric == "mIoU" })
        XCTAssertEqual(upernet.interval.delta, 10, accuracy: 1e-9)
        XCTAssertTrue(upernet.interval.significant && upernet.interval.low > 0, "\(upernet.interval)")
        let rows = md.split(separator: "\n").filter { $0.hasPrefix("| shapes-segment") }
        XCTAssertEqual(rows.count, 2, md)
        XCTAssertTrue(rows[0].hasPrefix("| shapes-segment | segment (upernet) | mIoU | 43.00 | 41.00 | \(upernet.cell) | 48.1 (ViT-B UperNet, Table 5) |"), md)
        XCTAssertTrue(rows[1].hasPrefix("| shapes-segment-linear | segment (linear, last 1 blocks) | mIoU | 39.00 | 37.00 |"), md)
        XCTAssertTrue(rows[1].hasSuffix("| — |"), "the MAE paper has no linear segmentation probe: \(rows[1])")
        XCTAssertFalse(md.contains("(detection:"), "no detection resample count without detection runs")
    }
}
