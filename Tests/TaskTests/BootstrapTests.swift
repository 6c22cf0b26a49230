import Foundation
@testable import MAETasks
import XCTest

/// The paired bootstrap against numpy (`scripts/make_bootstrap_fixtures.py`): on the fixture's own
/// resamples the deltas and the percentile interval match exactly; with this project's resamples
/// the interval approaches numpy's 20,000-resample one; the segmentation statistic is mmseg's.
final class BootstrapTests: XCTestCase {
    struct Fixture: Decodable {
        struct Classification: Decodable {
            var a: [[Int]], b: [[Int]], delta: Double, resamples: [[Int]]
            var resampleDeltas: [Double], ci: [Double], ci20000: [Double]
            enum CodingKeys: String, CodingKey {
                case a, b, delta, resamples, resampleDeltas = "resample_deltas", ci, ci20000 = "ci_20000"
            }
        }
        struct Areas: Decodable {
            var intersect: [[Double]], union: [[Double]], labelArea: [[Double]]
            enum CodingKeys: String, CodingKey { case intersect, union, labelArea = "label_area" }
        }
        struct Segmentation: Decodable {
            var a: Areas, b: Areas, resamples: [[Int]], aMetrics: [[String: Double]], ci: [Double]
            enum CodingKeys: String, CodingKey { case a, b, resamples, aMetrics = "a_metrics", ci }
        }
        var classification: Classification
        var segmentation: Segmentation
    }

    func fixture() throws -> Fixture {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/bootstrap.json", withExtension: nil))
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }

    func counts(_ indices: [Int], images n: Int) -> [Int] {
        var c = [Int](repeating: 0, count: n)
        for i in indices { c[i] += 1 }
        return c
    }

    func statistics(_ hits: [[Int]]) -> [PerImageStatistic] {
        let images = (0..<hits[0].count).map { "img\($0).png" }
        return hits.map { ClassificationStatistic(images: images, correct: $0) }
    }

    func testClassificationIntervalMatchesNumpyOnTheSameResamples() throws {
        let f = try fixture().classification
        let n = f.a[0].count
        let a = statistics(f.a), b = statistics(f.b)
        for (r, indices) in f.resamples.prefix(20).enumerated() {
            let w = counts(indices, images: n)
            let d = a.map { $0.values(counts: w)["top1"]! }.reduce(0, +) / 2 - b.map { $0.values(counts: w)["top1"]! }.reduce(0, +) / 2
            XCTAssertEqual(d, f.resampleDeltas[r], accuracy: 1e-9, "resample \(r)")
        }
        let interval = try pairedBootstrap(a: a, b: b, metric: "top1", resamples: f.resamples.count) { self.counts(f.resamples[$0], images: n) }
        XCTAssertEqual(interval.delta, f.delta, accuracy: 1e-9)
        XCTAssertEqual(interval.low, f.ci[0], accuracy: 1e-9)
        XCTAssertEqual(interval.high, f.ci[1], accuracy: 1e-9)
        XCTAssertEqual(interval.significant, f.ci[0] > 0 || f.ci[1] < 0)
    }

    func testClassificationIntervalApproachesNumpyWithItsOwnResamples() throws {
        let f = try fixture().classification
        var settings = BootstrapSettings()
        settings.resamples = 4000
        let interval = try pairedBootstrap(a: statistics(f.a), b: statistics(f.b), metric: "top1", settings: settings)
        // Monte-Carlo error of a 2.5% percentile over 4,000 resamples, on deltas in steps of 0.25: about 0.3.
        XCTAssertEqual(interval.low, f.ci20000[0], accuracy: 0.8)
        XCTAssertEqual(interval.high, f.ci20000[1], accuracy: 0.8)
        let again = try pairedBootstrap(a: statistics(f.a), b: statistics(f.b), metric: "top1", settings: settings)
        XCTAssertEqual(interval, again, "the same settings draw the same resamples")
    }

    func testIdenticalBackbonesGiveAZeroIntervalAndUnpairedRunsAreRefused() throws {
        let f = try fixture().classification
        var settings = BootstrapSettings()
        settings.resamples = 200
        let same = try pairedBootstrap(a: statistics([f.a[0]]), b: statistics([f.a[0]]), metric: "top1", settings: settings)
        XCTAssertEqual([same.delta, same.low, same.high], [0, 0, 0])
        XCTAssertFalse(same.significant)
        let other = ClassificationStatistic(images: (0..<f.a[0].count).map { "other\($0).png" }, correct: f.a[0])
        XCTAssertThrowsError(try pairedBootstrap(a: statistics([f.a[0]]), b: [other], metric: "top1", settings: settings)) {
            XCTAssertTrue("\($0)".contains("different validation images"), "\($0)")
        }
    }

    func testSegmentationStatisticIsMMSegsOnResampledAreas() throws {
        let f = try fixture().segmentation
        let m = f.a.intersect.count
        let images = (0..<m).map { "scene\($0)" }
        let a = SegmentationStatistic(images: images, intersect: f.a.intersect, union: f.a.union, labelArea: f.a.labelArea)
        let b = SegmentationStatistic(images: images, intersect: f.b.intersect, union: f.b.union, labelArea: f.b.labelArea)
        var sawAbsentClass = false
        for (r, indices) in f.resamples.enumerated() {
            let got = a.values(counts: counts(indices, images: m))
            for key in ["mIoU", "mAcc", "aAcc"] {
                XCTAssertEqual(got[key]!, f.aMetrics[r][key]!, accuracy: 1e-9, "resample \(r) \(key)")
            }
            sawAbsentClass = sawAbsentClass || indices.allSatisfy { f.a.labelArea[$0][2] == 0 }
        }
        XCTAssertTrue(sawAbsentClass, "the fixture should hold a resample without class 2 (nanmean)")
        let interval = try pairedBootstrap(a: [a], b: [b], metric: "mIoU", resamples: f.resamples.count) {
            self.counts(f.resamples[$0], images: m)
        }
        XCTAssertEqual(interval.low, f.ci[0], accuracy: 1e-9)
        XCTAssertEqual(interval.high, f.ci[1], accuracy: 1e-9)
    }

    func testPercentileIsNumpysLinearInterpolation() {
        // np.percentile([1, 2, 4, 8], [0, 2.5, 50, 97.5, 100]) = [1, 1.075, 3, 7.7, 8]
        let xs: [Double] = [1, 2, 4, 8]
        for (q, want) in [(0.0, 1.0), (2.5, 1.075), (50, 3), (97.5, 7.7), (100, 8)] {
            XCTAssertEqual(percentile(sorted: xs, q), want, accuracy: 1e-12, "q \(q)")
        }
    }

    func testDeltaCellSaysNotSignificantWhenTheIntervalCoversZero() {
        func cell(_ low: Double, _ high: Double, std: Double? = nil) -> String {
            SectionDelta(task: "t", evaluation: "linprobe", variant: "", metric: "top1", backbone: "a", reference: "b",
                         interval: DeltaInterval(delta: 1.5, low: low, high: high), seedStd: std, seeds: 1).cell
        }
        XCTAssertEqual(cell(0.5, 2.5), "+1.50 [+0.50, +2.50]")
        XCTAssertEqual(cell(-0.5, 2.5), "n.s. (+1.50 [-0.50, +2.50])")
        XCTAssertEqual(cell(0.5, 2.5, std: 0.25), "+1.50 ± 0.25 [+0.50, +2.50]")
    }
}
