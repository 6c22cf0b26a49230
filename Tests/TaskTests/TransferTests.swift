import XCTest
import MAEData
import MAEFormats
import MAEKernels
import MAEModels
@testable import MAETasks
import TestSupport

/// Classification transfer: kNN, the cached linear probe, the probe's BatchNorm, partial
/// fine-tuning, the report, task specs and bad input.
final class TransferTests: XCTestCase {
    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }
    let repoRoot = repositoryRoot


    // MARK: - kNN

    /// Train points on the unit circle; by hand: query q at angle 0 with k 3 has neighbours at
    /// angles 0.1 (class 0), -0.2 (class 1), 0.3 (class 1). Weights exp(cos / T), T 0.5:
    /// class 0: e^(cos 0.1 / 0.5) = 7.316; class 1: e^(cos 0.2 / 0.5) + e^(cos 0.3 / 0.5) = 7.120 + 6.790
    /// -> class 1 wins by two votes though class 0 has the nearest point. With T 0.01 the nearest
    /// dominates -> class 0.
    func testWeightedKNNOnHandMadeFeatures() {
        let angles: [Float] = [0.1, -0.2, 0.3, 2.0, 2.5]
        let labels = [0, 1, 1, 2, 2]
        let train = angles.flatMap { [cos($0) * 3, sin($0) * 3] }   // scale is normalised away
        let query: [Float] = [1, 0]
        let warm = knnClassify(train: train, trainLabels: labels, test: query, testLabels: [1], width: 2, classes: 3, k: 3, temperature: 0.5)
        XCTAssertEqual(warm.top1, 100)
        let cold = knnClassify(train: train, trainLabels: labels, test: query, testLabels: [1], width: 2, classes: 3, k: 3, temperature: 0.01)
        XCTAssertEqual(cold.top1, 0)
        XCTAssertEqual(cold.top5, 100, "class 1 is second, within the top 5")
        // k larger than the train set uses every point.
        let all = knnClassify(train: train, trainLabels: labels, test: [-1, 0], testLabels: [2], width: 2, classes: 3, k: 50, temperature: 0.07)
        XCTAssertEqual(all.top1, 100)
    }

    // MARK: - Linear probe

    func blobs(_ n: Int, seed: UInt64 = 3) -> FeatureSet {
        var rng = RandomStream(seed: seed)
        var x: [Float] = [], y: [Int] = []
        for i in 0..<n {
            let c = i % 4
            for j in 0..<8 { x.append((j == c ? 5 : 0) + Float(rng.normal()) * 0.5 + 10) }
            y.append(c)
        }
        return FeatureSet(features: x, labels: y, width: 8, classes: ["a", "b", "c", "d"])
    }

    func testGridProbeSeparatesSeparableFeatures() throws {
        var settings = GridProbeSettings(recipe: RecipeSpec())
        settings.epochs = 30
        settings.batchSize = 32
        let r = try gridProbe(train: blobs(200), val: blobs(100), settings: settings, seed: 0)
        XCTAssertEqual(r.val.top1, 100)
        XCTAssertEqual(r.split.held.count, 20, "10% of train held out, stratified")
        XCTAssertEqual(Set(r.split.held).intersection(r.split.fit).count, 0)
    }

    /// `--epochs 5` is 5 epochs over the cached features (it was raised to 4000 steps).
    func testGridProbeRunsTheEpochsItIsGiven() throws {
        var settings = GridProbeSettings(recipe: RecipeSpec())
        settings.epochs = 5
        settings.batchSize = 32
        let r = try gridProbe(train: blobs(200), val: blobs(100), settings: settings, seed: 0)
        XCTAssertEqual(r.log.map(\.epoch), [1, 2, 3, 4, 5])
        XCTAssertEqual(r.stepsPerEpoch, 7, "200 images in batches of 32")
        XCTAssertEqual(r.steps, 35)
    }

    /// A grid point whose head diverges ranks last and is never chosen; a grid that diverges
    /// everywhere (NaN features) is an error, not a result.
    func testDivergedGridPointsAreNeverChosen() throws {
        var settings = GridProbeSettings(recipe: RecipeSpec())
        settings.lrs = [3e38, 0.1]
        settings.epochs = 5
        settings.batchSize = 32
        let r = try gridProbe(train: blobs(200), val: blobs(100), settings: settings, seed: 0)
        XCTAssertFalse(r.heldout[0].loss.isFinite, "lr 3e38 overflows the weights")
        XCTAssertEqual(r.pairs[r.best].lr, 0.1)
        var poisoned = blobs(200)
        poisoned.features[5] = .nan
        XCTAssertThrowsError(try gridProbe(train: poisoned, val: blobs(100), settings: settings, seed: 0)) { e in
            XCTAssertTrue("\(e)".contains("every one of the 2 (lr, weight decay) heads diverged"), "\(e)")
        }
    }

    /// Against scikit-learn's LogisticRegressionCV (C tuned by 5-fold CV over 33 values), from
    /// scripts/make_transfer_fixtures.py: the probe must reach at least its val accuracy (within
    /// one val image of 300).
    func testGridProbeMatchesTunedLogisticRegression() throws {
        struct Fixture: Decodable {
            let classes: Int, width: Int
            let train_features: [Float], train_labels: [Int], val_features: [Float], val_labels: [Int]
            let sklearn_top1: Double
        }
        let f = try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: fixture("logreg_features.json")))
        let names = (0..<f.classes).map(String.init)
        let train = FeatureSet(features: f.train_features, labels: f.train_labels, width: f.width, classes: names)
        let val = FeatureSet(features: f.val_features, labels: f.val_labels, width: f.width, classes: names)
        let spec = try TaskSpec.load(contentsOf: repoRoot.appendingPathComponent("Tasks/shapes-linprobe.yaml"))
        var settings = GridProbeSettings(recipe: spec.recipe)
        // The shipped weight-decay grid, folds and schedule; only the top of the lr grid, where
        // every weight decay converges, and 1000 steps (500 epochs of 2 steps), to keep the debug-build test short.
        settings.lrs = [1, 3]
        settings.epochs = 500
        let r = try gridProbe(train: train, val: val, settings: settings, seed: 0)
        XCTAssertGreaterThanOrEqual(r.val.top1, f.sklearn_top1 - 100.0 / 300, "probe \(r.val.top1) vs sklearn \(f.sklearn_top1)")
    }

    func testBatchNormWithoutAffineMatchesFormula() {
        var bn = BatchNorm1d(width: 2)
        let x: [Float] = [1, 10, 2, 20, 6, 30]          // (3, 2)
        let y = bn.forward(x, batch: 3, training: true)
        // Column 0: mean 3, biased var ((4 + 1 + 9) / 3); column 1: mean 20, var 200 / 3.
        let v0: Float = 14.0 / 3, v1: Float = 200.0 / 3
        let expected: [Float] = [(1 - 3) / (v0 + 1e-6).squareRoot(), (10 - 20) / (v1 + 1e-6).squareRoot(),
                                 (2 - 3) / (v0 + 1e-6).squareRoot(), 0,
                                 (6 - 3) / (v0 + 1e-6).squareRoot(), (30 - 20) / (v1 + 1e-6).squareRoot()]
        for i in 0..<6 { XCTAssertEqual(y[i], expected[i], accuracy: 1e-5) }
        // Running stats: momentum 0.1 from (0, 1), unbiased variance (7 and 100).
        XCTAssertEqual(bn.runningMean[0], 0.3, accuracy: 1e-6)
        XCTAssertEqual(bn.runningMean[1], 2.0, accuracy: 1e-6)
        XCTAssertEqual(bn.runningVar[0], 0.9 + 0.7, accuracy: 1e-5)
        XCTAssertEqual(bn.runningVar[1], 0.9 + 10, accuracy: 1e-4)
        let e = bn.forward([1, 10], batch: 1, training: false)
        XCTAssertEqual(e[0], (1 - 0.3) / (1.6 + 1e-6).squareRoot(), accuracy: 1e-5)
        XCTAssertEqual(e[1], (10 - 2) / (10.9 + 1e-6).squareRoot(), accuracy: 1e-5)
    }

    // MARK: - Fine-tuning

    func testPartialFineTuningLeavesFrozenBlocksUnchanged() throws {
        let backbone = try VisionTransformer(config: ViTConfig(imgSize: 8, patchSize: 4, embedDim: 16, depth: 3, numHeads: 2))
        backbone.initializeWeights(seed: 1)
        let (model, fresh) = try makeClassifier(from: backbone, classes: 3, headStd: 0.02, seed: 0)
        XCTAssertEqual(Set(fresh), ["fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"])
        XCTAssertEqual(Array(model.params.value("blocks.1.attn.qkv.weight")), Array(backbone.params.value("blocks.1.attn.qkv.weight")))
        let groups = fineTuneGroups(model, blocks: 1, layerDecay: 0.75)
        model.lowestTrainedBlock = 2
        let before = Dictionary(uniqueKeysWithValues: model.params.specs.map { ($0.name, Array(model.params.value($0.name))) })
        let optimizer = AdamW(count: model.params.layout.totalCount, groups: groups)
        let images = randomValues(2 * 3 * 8 * 8, seed: 5)
        model.params.zeroGrads()
        let pass = images.withUnsafeBufferPointer { model.forwardLogits(images: $0.baseAddress!, batch: 2, training: true, seed: 1) }
        _ = model.classificationLoss(pass, targets: smoothedTargets(labels: [0, 2], classes: 3, smoothing: 0.1))
        model.backwardClassification(pass)
        optimizer.step(model.params, lr: 0.01)
        for spec in model.params.specs {
            let changed = Array(model.params.value(spec.name)) != before[spec.name]!
            let trains = spec.name.hasPrefix("blocks.2.") || spec.name.hasPrefix("fc_norm") || spec.name.hasPrefix("head")
            XCTAssertEqual(changed, trains, "\(spec.name) \(trains ? "should train" : "is frozen")")
        }
    }

    func testMixupTargetsAreConvexCombinations() {
        var rng = RandomStream(seed: 9)
        let mixer = Mixup(classes: 3, mixupAlpha: 0.8, cutmixAlpha: 1, labelSmoothing: 0.1)
        for _ in 0..<20 {
            var images = randomValues(4 * 3 * 4 * 4, seed: 2)
            let draw = mixer.draw(height: 4, width: 4, rng: &rng)
            let (t, lam) = mixer.mix(&images, labels: [0, 1, 2, 0], channels: 3, height: 4, width: 4, draw: draw)
            XCTAssertTrue((0...1).contains(lam))
            for r in 0..<4 { XCTAssertEqual(t[(r * 3)..<(r * 3 + 3)].reduce(0, +), 1, accuracy: 1e-5) }
            // Sample 0 mixes label 0 with sample 3's label 0: all its mass stays on class 0 (+ smoothing).
            XCTAssertEqual(t[0], 0.9 + 0.1 / 3, accuracy: 1e-5)
        }
    }

    // MARK: - Report

    func fakeMetrics(checkpoint: String, method: String, role: String, seed: UInt64, top1: Double) -> TransferMetrics {
        TransferMetrics(
            task: "shapes-linprobe", evaluation: "linprobe", variant: "cached, cls", checkpoint: "Checkpoints/\(checkpoint).safetensors",
            checkpointHash: checkpoint, method: method, role: role, top1: top1, top5: 99, seed: seed, recipe: "a recipe",
            dataset: "shapes", trainData: "train", valData: "val", trainImages: 2000, valImages: 1000, classes: 10,
            pooling: "cls", selected: ["lr": 0.1, "weight_decay": 0], grid: nil,
            protocolChecks: ["backbone frozen", "feature: \(method == "mae" ? "cls" : "avg")"],
            timings: ["total_s": 3], epochs: 3, created: "now")
    }

    func fakeLog(top1: Double, loss: Double = 2) -> [TransferEpoch] {
        (1...3).map { TransferEpoch(epoch: $0, trainLoss: loss / Double($0), lr: 0.1, valTop1: top1 - Double(3 - $0), seconds: 1) }
    }

    @discardableResult
    func fakeRun(_ root: URL, checkpoint: String, method: String, role: String, seed: UInt64, top1: Double) throws -> TransferRun {
        let run = TransferRun(dir: root.appendingPathComponent("shapes-linprobe/cached-cls/\(checkpoint)-s\(seed)"))
        try run.write(fakeMetrics(checkpoint: checkpoint, method: method, role: role, seed: seed, top1: top1), log: fakeLog(top1: top1))
        return run
    }

    /// A NaN is never written as a result: one sentence naming the field and the run (it was
    /// `EncodingError.invalidValue: nan`), and no folder is left behind.
    func testNonFiniteNumbersAreRefusedBeforeAnythingIsWritten() throws {
        let root = try scratchFolder()
        let run = TransferRun(dir: root.appendingPathComponent("shapes-linprobe/cached-cls/mae-s0"))
        let good = fakeMetrics(checkpoint: "mae", method: "mae", role: "checkpoint", seed: 0, top1: 50)
        XCTAssertThrowsError(try run.write(good, log: fakeLog(top1: 50, loss: .nan))) { e in
            XCTAssertEqual("\(e)", "train loss is NaN at epoch 1 of \(run.dir.path): the head diverged.")
        }
        var bad = good
        bad.grid = [["lr": 0.1, "heldout_loss": 1], ["lr": .infinity, "heldout_loss": 1]]
        XCTAssertThrowsError(try run.write(bad, log: fakeLog(top1: 50))) { e in
            XCTAssertTrue("\(e)".hasPrefix("grid point 2 lr is +Inf in the metrics of \(run.dir.path)"), "\(e)")
        }
        bad = good
        bad.top1 = .nan
        XCTAssertThrowsError(try run.write(bad)) { XCTAssertTrue("\($0)".hasPrefix("top-1 is NaN"), "\($0)") }
        XCTAssertFalse(FileManager.default.fileExists(atPath: run.dir.path), "nothing was written")
    }

    func testReportPutsMethodsSideBySideWithDeltaAndSeedSpread() throws {
        let root = try scratchFolder()
        try fakeRun(root, checkpoint: "mae_shapes", method: "mae", role: "checkpoint", seed: 0, top1: 80)
        try fakeRun(root, checkpoint: "mae_shapes", method: "mae", role: "checkpoint", seed: 1, top1: 82)
        try fakeRun(root, checkpoint: "supervised_shapes", method: "supervised", role: "baseline", seed: 0, top1: 75)
        try fakeRun(root, checkpoint: "supervised_shapes", method: "supervised", role: "baseline", seed: 1, top1: 76)
        let out = root.appendingPathComponent("Reports/classification.md")
        try writeReport(runs: root, to: out)
        let md = try String(contentsOf: out, encoding: .utf8)
        XCTAssertTrue(md.contains("| shapes-linprobe | linprobe (cached, cls) | 81.00 ± 1.41 | 75.50 ± 0.71 | +5.50 | 68.0"), md)
        XCTAssertTrue(md.contains("| mae_shapes | mae | checkpoint | 81.00 ± 1.41 | 99.00 ± 0.00 | +5.50 | 0, 1 |"), md)
        XCTAssertTrue(md.contains("| supervised_shapes | supervised | baseline | 75.50 ± 0.71 |"), md)
        XCTAssertTrue(md.contains("- backbone frozen\n"), "shared checks once")
        XCTAssertTrue(md.contains("- mae_shapes: feature: cls\n"), "backbone-specific checks named")
        let figures = root.appendingPathComponent("Reports/classification-figures")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: figures.path).sorted(),
                       ["shapes-linprobe-linprobe-cached-cls-loss.png", "shapes-linprobe-linprobe-cached-cls-val.png"])
    }

    /// `report --runs X` with X missing or a file, and a corrupt or incomplete metrics.json, are
    /// errors naming the path (a corrupt seed 0 used to vanish from the mean); a pretraining run's
    /// metrics.json is not a transfer run and is skipped.
    func testReportRefusesMissingFoldersAndBrokenMetrics() throws {
        let root = try scratchFolder()
        let out = root.appendingPathComponent("report.md")
        XCTAssertThrowsError(try writeReport(runs: root.appendingPathComponent("nope"), to: out)) { e in
            XCTAssertEqual("\(e)", "\(root.appendingPathComponent("nope").path) is not a folder of runs (no such folder).")
        }
        try Data("x".utf8).write(to: root.appendingPathComponent("file"))
        XCTAssertThrowsError(try writeReport(runs: root.appendingPathComponent("file"), to: out)) { e in
            XCTAssertTrue("\(e)".hasSuffix("file is not a folder of runs."), "\(e)")
        }
        let runs = root.appendingPathComponent("runs")
        let seed0 = try fakeRun(runs, checkpoint: "mae_shapes", method: "mae", role: "checkpoint", seed: 0, top1: 80)
        try fakeRun(runs, checkpoint: "mae_shapes", method: "mae", role: "checkpoint", seed: 1, top1: 82)
        let pretrain = PretrainMetrics(method: "mae", model: "m", data: "d", epochs: 1, final_loss: 0.5, losses: [0.5],
                                       images_per_s: 1, seconds: 1, recipe: "r", seed: 0, batch_size: 8, checkpoint: "c", backbone: "b",
                                       created: "2026-12-01T00:00:00Z")
        try FileManager.default.createDirectory(at: runs.appendingPathComponent("pt"), withIntermediateDirectories: true)
        try JSONEncoder().encode(pretrain).write(to: runs.appendingPathComponent("pt/metrics.json"))
        try writeReport(runs: runs, to: out)
        XCTAssertTrue(try String(contentsOf: out, encoding: .utf8).contains("81.00 ± 1.41"))
        let good = try Data(contentsOf: seed0.metrics)
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: good) as? [String: Any])
        object["top1"] = nil
        try JSONSerialization.data(withJSONObject: object).write(to: seed0.metrics)
        XCTAssertThrowsError(try writeReport(runs: runs, to: out)) { e in
            XCTAssertEqual("\(e)", "\(seed0.metrics.path) lacks the field 'top1', so the report cannot include its run.")
        }
        try good.prefix(50).write(to: seed0.metrics)
        XCTAssertThrowsError(try writeReport(runs: runs, to: out)) { e in
            XCTAssertTrue("\(e)".hasPrefix("\(seed0.metrics.path) is not a JSON object"), "\(e)")
        }
    }

    // MARK: - Task specs and bad input

    /// One class: top-1 would be 100% by construction, so the folder is refused.
    func testOneClassSplitIsRefused() throws {
        let root = try scratchFolder()
        let one = root.appendingPathComponent("one")
        try FileManager.default.createDirectory(at: one, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: fixture("imagefolder/alpha"), to: one.appendingPathComponent("alpha"))
        var o = TransferOptions()
        let spec = try TaskSpec.load(contentsOf: repoRoot.appendingPathComponent("Tasks/shapes-linprobe.yaml"))
        o.trainData = fixture("imagefolder")
        o.valData = one
        XCTAssertThrowsError(try o.datasets(spec)) { e in
            XCTAssertEqual("\(e)", "\(one.path) has only one class folder ('alpha'): classification needs at least two classes " +
                           "(with one, top-1 is 100% by construction).")
        }
        o.trainData = one
        XCTAssertThrowsError(try o.datasets(spec)) { XCTAssertTrue("\($0)".hasPrefix(one.path), "\($0)") }
        o.valData = fixture("imagefolder")
        XCTAssertThrowsError(try o.datasets(spec))
    }

    func testShippedTaskSpecsParse() throws {
        for name in ["shapes-linprobe", "shapes-knn", "shapes-finetune"] {
            let spec = try TaskSpec.load(contentsOf: repoRoot.appendingPathComponent("Tasks/\(name).yaml"))
            XCTAssertEqual(spec.name, name)
            XCTAssertEqual(spec.dataset.imgSize, 32)
        }
    }

    func testUnknownTaskFieldIsOneSentence() {
        let yaml = """
            name: t
            protocol: linprobe
            dataset: {name: d, root: r, train: a, val: b, img_size: 32, crop_ratio: 1}
            head: {pooling: cls}
            recipe: {lr_grd: [0.1]}
            metrics: [top1]
            seeds: [0]
            """
        XCTAssertThrowsError(try TaskSpec.parse(yaml, source: "my.yaml")) { e in
            let s = "\(e)"
            XCTAssertTrue(s.hasPrefix("my.yaml: has an unknown field 'recipe.lr_grd'"), s)
            XCTAssertFalse(s.contains("\n"), s)
        }
        XCTAssertThrowsError(try TaskSpec.parse(yaml.replacingOccurrences(of: "lr_grd", with: "epochs").replacingOccurrences(of: "[0.1]", with: "many"),
                                                source: "my.yaml")) { e in
            XCTAssertTrue("\(e)".contains("recipe.epochs"), "\(e)")
        }
    }

    func testMissingCheckpointAndEmptyImageFolderAreOneSentence() throws {
        var o = TransferOptions()
        o.checkpoints = [URL(fileURLWithPath: "/nonexistent/backbone.safetensors")]
        XCTAssertThrowsError(try o.backbones()) { e in
            XCTAssertEqual("\(e)", "/nonexistent/backbone.safetensors: no such checkpoint.")
        }
        let root = try scratchFolder()
        try FileManager.default.createDirectory(at: root.appendingPathComponent("train/cat"), withIntermediateDirectories: true)
        o.trainData = root.appendingPathComponent("train")
        o.valData = root.appendingPathComponent("train")
        let spec = try TaskSpec.load(contentsOf: repoRoot.appendingPathComponent("Tasks/shapes-linprobe.yaml"))
        XCTAssertThrowsError(try o.datasets(spec)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains(root.appendingPathComponent("train/cat").path) && s.contains("empty class folder"), s)
            XCTAssertFalse(s.contains("\n"), s)
        }
        o.valData = nil
        XCTAssertThrowsError(try o.datasets(spec)) { XCTAssertTrue("\($0)".contains("--train-data and --val-data together")) }
    }
}
