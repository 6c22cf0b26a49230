import Foundation
import MAECOCO
import MAEMetrics
@testable import MAETasks
import XCTest

/// The detection bootstrap statistic against pycocotools (`scripts/make_detection_bootstrap_fixtures.py`):
/// on resamples with repeated and left-out images, COCO eval over the relabeled multiset gives
/// pycocotools' 12 bbox and 12 segm numbers; and the dense unit kinds plan the shipped specs.
final class DetectionBootstrapTests: XCTestCase {
    struct Fixture: Decodable {
        var imageIds: [Int], resamples: [[Int]], expected: [[String: [Double]]]
        enum CodingKeys: String, CodingKey { case imageIds = "image_ids", resamples, expected }
    }

    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-detboot-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// A run folder as a detection run leaves it: `detections.json`, `per_image.json` and the ground truth.
    func runFolder() throws -> (URL, Fixture) {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/detection_bootstrap.json", withExtension: nil))
        let data = try Data(contentsOf: url)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: data) as? [String: Any])
        let gt = scratch.appendingPathComponent("instances_val.json")
        try JSONSerialization.data(withJSONObject: object["ground_truth"]!).write(to: gt)
        try JSONSerialization.data(withJSONObject: object["detections"]!).write(to: scratch.appendingPathComponent("detections.json"))
        let fixture = try JSONDecoder().decode(Fixture.self, from: data)
        try PerImageResults(detection: fixture.imageIds, groundTruth: gt).write(into: scratch)
        return (scratch, fixture)
    }

    func testResampledCOCOEvalMatchesPycocotoolsOnTheRelabeledMultiset() throws {
        let (run, fixture) = try runFolder()
        let statistic = try XCTUnwrap(try perImageStatistic(try PerImageResults.read(from: run), run: run) as? DetectionStatistic)
        XCTAssertEqual(statistic.images, fixture.imageIds.map(String.init))
        let names = [("AP", ""), ("AP50", "50"), ("AP75", "75"), ("APs", "s"), ("APm", "m"), ("APl", "l")]
        for (counts, expected) in zip(fixture.resamples, fixture.expected) {
            let values = statistic.values(counts: counts)
            for (type, prefix) in [("bbox", "APbox"), ("segm", "APmask")] {
                let stats = try XCTUnwrap(expected[type])
                for (name, suffix) in names {
                    let k = try XCTUnwrap(cocoStatNames.firstIndex(of: name))
                    XCTAssertEqual(try XCTUnwrap(values[prefix + suffix]), stats[k], accuracy: 1e-9, "\(counts) \(prefix + suffix)")
                }
            }
        }
        // All ones is the run itself: the same numbers as scoring the files as they are.
        let gt = try COCODataset(contentsOf: run.appendingPathComponent("instances_val.json"))
        let (bbox, segm) = try cocoMetrics(groundTruth: gt, results: try COCODetection.load(contentsOf: run.appendingPathComponent("detections.json")),
                                           groundTruthFile: "instances_val.json")
        let own = statistic.values(counts: [1, 1, 1, 1])
        XCTAssertEqual(own["APbox"], bbox["AP"])
        XCTAssertEqual(own["APmask75"], segm["AP75"])
    }

    func testDetectionBootstrapUsesItsOwnResampleCount() throws {
        let (run, _) = try runFolder()
        let statistic = try perImageStatistic(try PerImageResults.read(from: run), run: run)
        var settings = BootstrapSettings()
        settings.detectionResamples = 30
        XCTAssertEqual(settings.resamples(for: statistic), 30)
        XCTAssertEqual(settings.resamples(for: ClassificationStatistic(images: ["a"], correct: [1])), 10_000)
        var drawn = 0
        let intervals = try pairedBootstrap(a: [statistic], b: [statistic], metrics: ["APbox", "APmask"], resamples: 30) { r in
            drawn += 1
            return bootstrapCounts(images: 4, resample: r, seed: 0)
        }
        XCTAssertEqual(drawn, 30)
        XCTAssertEqual(intervals["APbox"], DeltaInterval(delta: 0, low: 0, high: 0), "a run against itself differs on no resample")
    }

    func testStrayDetectionIsRefusedNamingTheImage() throws {
        let (run, _) = try runFolder()
        let gt = try COCODataset(contentsOf: run.appendingPathComponent("instances_val.json"))
        XCTAssertThrowsError(try DetectionStatistic(images: ["7", "3"], groundTruth: gt, groundTruthFile: "gt.json",
                                                    detections: [COCODetection(imageId: 11, categoryId: 1, score: 0.5, bbox: [0, 0, 2, 2])])) {
            XCTAssertTrue("\($0)".contains("image 11"), "\($0)")
        }
    }

    func testDenseUnitKindsPlanTheShippedSpecs() throws {
        var o = AllOptions()
        o.verbose = false
        o.tasks = ["shapes-detect", "shapes-segment", "shapes-segment-linear"]
        let units = try planUnits(o)
        XCTAssertEqual(Set(units.map(\.task.protocolName)), ["detect", "segment"])
        XCTAssertEqual(Set(units.map(\.task.name)), ["shapes-detect", "shapes-segment", "shapes-segment-linear"])
        XCTAssertEqual(Set(units.map(\.backbone.role)), ["checkpoint", "baseline"])
        XCTAssertEqual(try specProtocol(TaskSpec.folder.appendingPathComponent("shapes-segment.yaml")), "segment")
        // The user-given COCO and ADE20K recipes are skipped by the default plan while their data is not there.
        o.tasks = nil
        let all = try planUnits(o).map(\.task.name)
        XCTAssertTrue(all.contains("shapes-detect") && all.contains("shapes-segment-linear"), "\(Set(all))")
        XCTAssertFalse(all.contains("coco-detect") || all.contains("ade20k-upernet"), "\(Set(all))")
        // Another seed list is the same task; the recipe text is its identity.
        let seeded = try DetectUnitKind().plan(spec: TaskSpec.folder.appendingPathComponent("shapes-detect.yaml"), seeds: [5])
        XCTAssertEqual(seeded.seeds, [5])
        XCTAssertEqual(seeded.hash, units.first { $0.task.name == "shapes-detect" }?.task.hash)
    }

    func testSegmentationPerImageAreasSumToTheRunsTotals() throws {
        var total = SegmentationMetrics(numClasses: 3)
        var each: [SegmentationMetrics] = []
        for (pred, truth) in [([0, 1, 1, 2], [0, 1, 2, 2]), ([2, 2, 0, 0], [2, 1, 255, 0])] as [([Int32], [Int32])] {
            try total.add(prediction: pred, groundTruth: truth)
            var one = SegmentationMetrics(numClasses: 3)
            try one.add(prediction: pred, groundTruth: truth)
            each.append(one)
        }
        let results = PerImageResults(segmentation: ["a", "b"], areas: each)
        try results.write(into: scratch)
        let statistic = try perImageStatistic(try PerImageResults.read(from: scratch), run: scratch)
        let values = statistic.values(counts: [1, 1])
        let expected = total.compute()
        XCTAssertEqual(try XCTUnwrap(values["mIoU"]), expected.mIoU, accuracy: 1e-9)
        XCTAssertEqual(try XCTUnwrap(values["aAcc"]), expected.aAcc, accuracy: 1e-9)
    }
}
