import Foundation
import MAEData
import MAEFormats
import MAEModels
@testable import MAETasks
import TestSupport
import XCTest

/// Task specs read safely and strictly, overrides, recipes that record what ran, resume checks and
/// config.yaml (issue 11, part C).
final class TaskSpecTests: XCTestCase {
    let repoRoot = repositoryRoot


    func shipped(_ name: String) throws -> String {
        try String(contentsOf: repoRoot.appendingPathComponent("Tasks/\(name).yaml"), encoding: .utf8)
    }

    /// Asserts that parsing fails with one sentence naming the source and containing `fragment`.
    func assertRefused(_ yaml: String, _ fragment: String, overrides: [String] = [], file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try TaskSpec.parse(yaml, source: "t.yaml", overrides: overrides), file: file, line: line) { e in
            let s = "\(e)"
            XCTAssertTrue(s.hasPrefix("t.yaml"), s, file: file, line: line)
            XCTAssertTrue(s.contains(fragment), "'\(s)' lacks '\(fragment)'", file: file, line: line)
            XCTAssertFalse(s.contains("\n") || s.hasSuffix("..") || s.contains("Scalar(") || s.contains("Yams"),
                           s, file: file, line: line)
        }
    }

    func replacing(_ yaml: String, _ old: String, _ new: String, file: StaticString = #filePath, line: UInt = #line) -> String {
        XCTAssertTrue(yaml.contains(old), "fixture lacks '\(old)'", file: file, line: line)
        return yaml.replacingOccurrences(of: old, with: new)
    }

    // MARK: - YAML read safely

    func testDeepNestingAndAliasBombAreRefusedQuickly() {
        let start = Date()
        assertRefused("name: x\nseeds: " + String(repeating: "[", count: 200_000) + "\n", "nests deeper than 64 levels")
        var lines = ["name: x", "a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
        for i in 1..<10 { lines.append("a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]") }
        lines.append("seeds: *a9")
        assertRefused(lines.joined(separator: "\n"), "anchors and aliases are not allowed")
        assertRefused("name: x\nseeds: *nothing\n", "uses an alias")
        assertRefused(String(repeating: "#", count: 2 << 20), "bytes long")
        XCTAssertLessThan(Date().timeIntervalSince(start), 1)
    }

    func testDuplicateKeysAreRefusedNamingTheKey() throws {
        let yaml = replacing(try shipped("shapes-linprobe"), "  epochs: 250\n", "  epochs: 10\n  epochs: 20\n")
        assertRefused(yaml, "sets 'recipe.epochs' twice")
    }

    func testTypeErrorsNameTheFieldInPlainWords() throws {
        let lp = try shipped("shapes-linprobe")
        assertRefused(replacing(lp, "epochs: 250", "epochs: ten"), "recipe.epochs must be an integer, not 'ten'")
        assertRefused(replacing(lp, "lr_grid: [0.01,", "lr_grid: [\"fast\","), "recipe.lr_grid[0] must be a number, not 'fast'")
        assertRefused(replacing(lp, "name: shapes-linprobe", "name: [shapes"), "is not valid YAML")
    }

    func testFolderIsNotASpec() {
        XCTAssertThrowsError(try TaskSpec.load(repoRoot.appendingPathComponent("Tasks").path)) { e in
            XCTAssertTrue("\(e)".hasSuffix("Tasks: is a folder, not a task spec file."), "\(e)")
        }
    }

    // MARK: - Every field against its domain

    func testNonFiniteAndOutOfDomainValuesAreRefused() throws {
        let lp = try shipped("shapes-linprobe"), ft = try shipped("shapes-finetune"), knn = try shipped("shapes-knn")
        assertRefused(replacing(lp, "lr_grid: [0.01,", "lr_grid: [.nan,"), "recipe.lr_grid must list positive finite")
        assertRefused(replacing(lp, "lr_grid: [0.01,", "lr_grid: [.inf,"), "recipe.lr_grid must list positive finite")
        assertRefused(replacing(lp, "warmup_epochs: 5", "warmup_epochs: -1"), "recipe.warmup_epochs must be in [0, 250)")
        assertRefused(replacing(lp, "warmup_epochs: 5", "warmup_epochs: 250"), "recipe.warmup_epochs must be in [0, 250)")
        assertRefused(replacing(lp, "warmup_epochs: 3", "warmup_epochs: 30"), "recipe.augmented.warmup_epochs must be in [0, 30)")
        assertRefused(replacing(lp, "seeds: [0]", "seeds: [0, 0]"), "seeds lists 0 twice")
        assertRefused(replacing(knn, "temperature: 0.07", "temperature: .inf"), "head.temperature must be a positive number")
        let cases: [(String, String, String)] = [
            ("layer_decay: 0.75", "layer_decay: -0.75", "recipe.layer_decay must be in (0, 1], not -0.75"),
            ("mixup: 0.0", "mixup: -1", "recipe.augmentation.mixup must be a number >= 0, not -1"),
            ("label_smoothing: 0.1", "label_smoothing: 1.5", "recipe.augmentation.label_smoothing must be in [0, 1)"),
            ("reprob: 0.0", "reprob: 7", "recipe.augmentation.reprob must be in [0, 1], not 7"),
            ("rand-m5-mstd0.5-inc1", "rand-m999-n50", "needs magnitude m <= mmax <= 30"),
            ("rand-m5-mstd0.5-inc1", "rand-m9-n50", "needs n in 0...16"),
            ("drop_path: 0.1", "drop_path: 1", "recipe.drop_path must be in [0, 1), not 1"),
            ("weight_decay: 0.05", "weight_decay: -1", "recipe.weight_decay must be a number >= 0"),
            ("min_lr: 0.000001", "min_lr: 1", "recipe.min_lr 1.0 is above the learning rate"),
            ("pooling: avg", "pooling: cls", "head.pooling must be avg for fine-tuning"),
        ]
        for (old, new, fragment) in cases { assertRefused(replacing(ft, old, new), fragment) }
    }

    func testOptimizersAreHonouredOrRefused() throws {
        assertRefused(replacing(try shipped("shapes-finetune"), "optimizer: adamw", "optimizer: sgd"),
                      "recipe.optimizer 'sgd' is not supported by a finetune task (supported: adamw)")
        assertRefused(replacing(try shipped("shapes-linprobe"), "optimizer: lars", "optimizer: sgd"),
                      "recipe.augmented.optimizer 'sgd' is not supported by a linprobe augmented task (supported: lars)")
    }

    func testFieldsAProtocolIgnoresAreRefused() throws {
        assertRefused(replacing(try shipped("shapes-linprobe"), "  mode: cached\n", "  mode: cached\n  layer_decay: 0.5\n"),
                      "sets 'recipe.layer_decay', which a linprobe task does not use")
        assertRefused(replacing(try shipped("shapes-knn"), "recipe: {}", "recipe: {epochs: 3}"),
                      "sets 'recipe.epochs', which a knn task does not use")
        assertRefused(replacing(try shipped("shapes-linprobe"), "    flip: true", "    flip: false"), "flip false is not supported")
    }

    // MARK: - --set overrides

    func testSetOverridesFieldsBeforeValidation() throws {
        let ft = try shipped("shapes-finetune")
        let spec = try TaskSpec.parse(ft, source: "t.yaml", overrides: ["recipe.base_lr=0.002", "dataset.img_size=64",
                                                                        "recipe.augmentation.rrc_scale=[0.5, 1]", "seeds=[1, 2]"])
        XCTAssertEqual(spec.recipe.baseLR, 0.002)
        XCTAssertEqual(spec.dataset.imgSize, 64)
        XCTAssertEqual(spec.recipe.augmentation?.rrcScale, [0.5, 1])
        XCTAssertEqual(spec.seeds, [1, 2])
        XCTAssertTrue(spec.recipeSummary.contains("blr 0.002"), spec.recipeSummary)
        // A section the file lacks is created.
        let knn = try TaskSpec.parse(try shipped("shapes-knn"), source: "k.yaml", overrides: ["head.k=5"])
        XCTAssertEqual(knn.head.k, 5)
        XCTAssertThrowsError(try TaskSpec.parse(ft, source: "t.yaml", overrides: ["recipe.foldz=3"])) { e in
            XCTAssertTrue("\(e)".hasPrefix("--set recipe.foldz=3: names no task-spec field: 'recipe.foldz' is unknown"), "\(e)")
        }
        XCTAssertThrowsError(try TaskSpec.parse(ft, source: "t.yaml", overrides: ["epochs"])) { e in
            XCTAssertTrue("\(e)".contains("must be KEY=VALUE"), "\(e)")
        }
        assertRefused(ft, "recipe.epochs must be an integer, not 'ten'", overrides: ["recipe.epochs=ten"])
        assertRefused(ft, "with --set recipe.layer_decay=2: recipe.layer_decay must be in (0, 1]", overrides: ["recipe.layer_decay=2"])
        XCTAssertThrowsError(try TaskSpec.parse(ft, source: "t.yaml", overrides: ["seeds=*a"])) { e in
            XCTAssertTrue("\(e)".hasPrefix("--set seeds=*a: uses an alias"), "\(e)")
        }
    }

    // MARK: - Paths, epochs, seeds

    func testDatasetRootIsRelativeToTheSpecFolder() throws {
        let folder = try scratchFolder().appendingPathComponent("specs")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let url = folder.appendingPathComponent("t.yaml")
        try replacing(try shipped("shapes-knn"), "root: ../.mae-eval/data/shapes", "root: data/shapes").write(to: url, atomically: true, encoding: .utf8)
        let spec = try TaskSpec.load(contentsOf: url)
        XCTAssertEqual(spec.dataset.trainURL.path, folder.appendingPathComponent("data/shapes/train").path)
        // The shipped specs point at the repository's .mae-eval, wherever the tool runs from.
        let lp = try TaskSpec.load(contentsOf: repoRoot.appendingPathComponent("Tasks/shapes-linprobe.yaml"))
        XCTAssertEqual(lp.dataset.rootURL.path, repoRoot.appendingPathComponent(".mae-eval/data/shapes").standardizedFileURL.path)
    }

    func testEpochsFlagShortensAWarmupThatWouldNotEnd() throws {
        var spec = try TaskSpec.parse(try shipped("shapes-linprobe"), source: "t.yaml")
        let notes = spec.setEpochs(2)
        XCTAssertEqual(spec.recipe.augmented?.epochs, 2)
        XCTAssertEqual(spec.recipe.augmented?.warmupEpochs ?? 0, 3.0 * 2 / 30, accuracy: 1e-12)
        XCTAssertEqual(spec.recipe.warmupEpochs ?? 0, 5.0 * 2 / 250, accuracy: 1e-12)
        XCTAssertEqual(notes.count, 2)
        XCTAssertEqual(spec.notes, notes)
        XCTAssertNoThrow(try spec.revalidate(flags: ["--epochs 2"]))
        // A warmup that ends in time is kept.
        var long = try TaskSpec.parse(try shipped("shapes-linprobe"), source: "t.yaml")
        XCTAssertTrue(long.setEpochs(50).isEmpty)
        XCTAssertEqual(long.recipe.augmented?.warmupEpochs, 3)
    }

    func testSeedListsRefuseEmptyAndRepeatedItems() throws {
        XCTAssertEqual(try TransferOptions.parseSeeds("0, 1,2"), [0, 1, 2])
        XCTAssertThrowsError(try TransferOptions.parseSeeds("1,,2")) { XCTAssertTrue("\($0)".contains("an item is empty"), "\($0)") }
        XCTAssertThrowsError(try TransferOptions.parseSeeds("0,0")) { XCTAssertTrue("\($0)".contains("lists 0 twice"), "\($0)") }
        XCTAssertThrowsError(try TransferOptions.parseSeeds("a")) { XCTAssertTrue("\($0)".contains("non-negative integers"), "\($0)") }
    }

    // MARK: - pretrain flags

    func testPretrainFlagsAreCheckedBeforeWork() {
        let base = PretrainOptions(method: .mae, epochs: 2, outDir: URL(fileURLWithPath: "/nonexistent/run"))
        let cases: [(WritableKeyPath<PretrainOptions, Double?>, Double, String)] = [
            (\.minCropScale, 1.5, "--min-crop-scale must be in (0, 1], not 1.5"),
            (\.minCropScale, 0, "--min-crop-scale must be in (0, 1]"),
            (\.dropPath, 2, "--drop-path must be in [0, 1)"),
            (\.dropPath, -1, "--drop-path must be in [0, 1)"),
            (\.weightDecay, -1, "--weight-decay must be a number >= 0"),
            (\.warmupEpochs, -2, "--warmup-epochs must be a number >= 0"),
            (\.blr, .infinity, "--blr must be a positive number"),
        ]
        for (key, value, fragment) in cases {
            var o = base
            o[keyPath: key] = value
            XCTAssertThrowsError(try runPretraining(o)) { XCTAssertTrue("\($0)".contains(fragment), "\($0)") }
        }
        var o = base
        o.minLR = 1
        XCTAssertThrowsError(try runPretraining(o)) { XCTAssertTrue("\($0)".contains("--min-lr must be a number >= 0 and at most the learning rate"), "\($0)") }
        o = base
        o.workers = -1
        XCTAssertThrowsError(try runPretraining(o)) { XCTAssertTrue("\($0)".contains("--workers must be in 0...256"), "\($0)") }
    }

    // MARK: - Fine-tuning records what ran

    /// `--batch-size 200` is the batch of the recorded recipe and config.yaml; a resume with another
    /// base_lr is refused naming the field.
    func testFineTuneRecordsFlagsAndRefusesAChangedResume() throws {
        let root = try scratchFolder()
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 20, val: 10, scenesTrain: 0, scenesVal: 0)
        let data = try ShapesDataset.ensure(at: root.appendingPathComponent("shapes"), size: 16, seed: 3, counts: counts)
        let backbone = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 4, embedDim: 16, depth: 2, numHeads: 2))
        backbone.initializeWeights(seed: 1)
        let checkpoint = root.appendingPathComponent("tiny.safetensors")
        try backbone.save(to: checkpoint, metadata: ["method": "mae"])
        var yaml = replacing(try shipped("shapes-finetune"), "root: ../.mae-eval/data/shapes", "root: \(data.root.path)")
        yaml = replacing(yaml, "  generate: shapes\n", "")
        yaml = replacing(yaml, "img_size: 32", "img_size: 16")
        let spec = root.appendingPathComponent("ft.yaml")
        try yaml.write(to: spec, atomically: true, encoding: .utf8)

        var o = FineTuneOptions()
        o.common.checkpoints = [checkpoint]
        o.common.task = spec.path
        o.common.epochs = 1
        o.common.outDir = root.appendingPathComponent("runs")
        o.common.report = nil
        o.common.verbose = false
        o.batchSize = 200
        let run = try XCTUnwrap(try runFineTune(o).first)
        let metrics = try JSONDecoder().decode(TransferMetrics.self, from: Data(contentsOf: run.metrics))
        XCTAssertTrue(metrics.recipe.contains("batch 200"), metrics.recipe)
        let config = try String(contentsOf: run.dir.appendingPathComponent("config.yaml"), encoding: .utf8)
        XCTAssertTrue(config.contains("recipe.batch_size: 200"), config)
        XCTAssertTrue(config.contains("batch_size: 200"), config)
        XCTAssertTrue(config.contains("command: finetune"), config)

        o.resume = true
        o.common.overrides = ["recipe.base_lr=0.01"]
        XCTAssertThrowsError(try runFineTune(o)) { e in
            XCTAssertTrue("\(e)".hasPrefix("recipe.base_lr is 0.01 but the run being resumed"), "\(e)")
            XCTAssertTrue("\(e)".contains("used 0.004"), "\(e)")
        }
    }
}
