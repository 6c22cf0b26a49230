import Foundation
import MAEData
@testable import MAETasks
import XCTest

/// Low-shot linear probes: the class-balanced seeded subsets, and on held-out Shapes images with the
/// shipped supervised backbone, 1-shot below 10-shot below (or at) the probe on all of train.
final class LowShotTests: XCTestCase {
    func testSubsetsAreClassBalancedSeededAndRefuseTooManyShots() throws {
        // 3 classes of 10, 4 and 1 images.
        let labels = Array(repeating: 0, count: 10) + Array(repeating: 1, count: 4) + [2]
        let classes = ["a", "b", "c"]
        let one = try lowShotSubset(labels: labels, classes: classes, budget: .shots(1), seed: 0)
        XCTAssertEqual(one.map { labels[$0] }.sorted(), [0, 1, 2])
        XCTAssertEqual(one, one.sorted())
        XCTAssertEqual(try lowShotSubset(labels: labels, classes: classes, budget: .shots(1), seed: 0), one, "a seed gives one subset")
        let seeds = try (0..<8).map { try lowShotSubset(labels: labels, classes: classes, budget: .shots(1), seed: UInt64($0)) }
        XCTAssertGreaterThan(Set(seeds).count, 1, "other seeds draw other images")
        // round(0.5 x n) per class, at least one: 5, 2, 1.
        let half = try lowShotSubset(labels: labels, classes: classes, budget: .fraction(0.5), seed: 3)
        XCTAssertEqual([0, 1, 2].map { c in half.filter { labels[$0] == c }.count }, [5, 2, 1])
        XCTAssertThrowsError(try lowShotSubset(labels: labels, classes: classes, budget: .shots(2), seed: 0)) {
            XCTAssertEqual("\($0)", "--shots 2 asks for more images than the 1 of class 'c'.")
        }
    }

    func testBudgetFieldsAreCheckedInTheSpec() throws {
        let base = "name: t\nprotocol: linprobe\ndataset: {name: d, root: /tmp, train: a, val: b, img_size: 16, crop_ratio: 1.0}\n" +
            "head: {pooling: cls}\nmetrics: [top1]\nseeds: [0]\n"
        for (recipe, problem) in [("{shots: 0}", "recipe.shots (--shots) must be at least 1, not 0"),
                                  ("{label_fraction: 1.5}", "recipe.label_fraction (--label-fraction) must be in (0, 1], not 1.5"),
                                  ("{shots: 1, label_fraction: 0.1}", "exclude each other"),
                                  ("{mode: augmented, shots: 1}", "apply to the cached linear probe only")] {
            XCTAssertThrowsError(try TaskSpec.parse(base + "recipe: \(recipe)\n", source: "t.yaml")) {
                XCTAssertTrue("\($0)".hasPrefix("t.yaml: ") && "\($0)".contains(problem), "\($0)")
            }
        }
        XCTAssertEqual(try LabelBudget.of(TaskSpec.parse(base + "recipe: {label_fraction: 0.01}\n", source: "t.yaml").recipe), .fraction(0.01))
        XCTAssertEqual([LabelBudget.fraction(0.1), .fraction(0.01), .shots(1), .shots(5)].map(\.described),
                       ["10% labels", "1% labels", "1 shot", "5 shots"])
        for name in ["shapes-linprobe-1shot", "shapes-linprobe-5shot", "shapes-linprobe-10shot", "shapes-linprobe-1pct", "shapes-linprobe-10pct"] {
            XCTAssertNotNil(try LabelBudget.of(TaskSpec.load(name).recipe), name)
        }
    }

    func testOneShotBelowTenShotBelowFullOnHeldOutImages() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-lowshot-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: scratch) }
        // 25 train images per class and 50 held-out val images at 16 px (the 32 px checkpoint's
        // pos_embed resized: a quarter of the tokens keeps the extraction short in a debug build).
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 250, val: 50, scenesTrain: 0, scenesVal: 0)
        let data = try ShapesDataset.ensure(at: scratch.appendingPathComponent("shapes"), size: 16, seed: 11, counts: counts)
        func probe(shots: Int?, seeds: [UInt64]) throws -> Double {
            var o = LinearProbeOptions()
            o.common.baseline = defaultSupervisedCheckpoint
            o.common.trainData = data.train
            o.common.valData = data.val
            o.common.seeds = seeds
            o.common.outDir = scratch.appendingPathComponent("runs")
            o.common.report = nil
            o.common.verbose = false
            o.common.imgSize = 16
            o.common.overrides = ["recipe.epochs=60", "recipe.lr_grid=[0.1, 1.0]", "recipe.wd_grid=[0.0, 0.001, 0.01]", "recipe.folds=2"]
            o.cache = FeatureCache(folder: scratch.appendingPathComponent("cache"))
            o.shots = shots
            let tops = try runLinearProbe(o).map { run -> Double in
                let m = try JSONDecoder().decode(TransferMetrics.self, from: Data(contentsOf: run.metrics))
                XCTAssertEqual(m.trainImages, shots.map { $0 * 10 } ?? 250)
                return m.top1
            }
            return tops.reduce(0, +) / Double(tops.count)
        }
        let one = try probe(shots: 1, seeds: [0, 1, 2]), ten = try probe(shots: 10, seeds: [0, 1, 2]), full = try probe(shots: nil, seeds: [0])
        XCTAssertGreaterThan(one, 10, "1-shot above chance (10%)")
        XCTAssertLessThan(one, ten, "1-shot \(one)% vs 10-shot \(ten)%")
        XCTAssertLessThanOrEqual(ten, full + 1e-9, "10-shot \(ten)% vs full \(full)%")
    }
}
