import XCTest
import MAEData
import MAEKernels
import MAEModels
@testable import MAETasks
import TestSupport

/// Where the shipped defaults are found, `--threads`, the version text and the progress lines.
final class InstallationTests: XCTestCase {

    func makeFolders(_ root: URL, _ paths: [String]) throws {
        for p in paths {
            try FileManager.default.createDirectory(at: root.appendingPathComponent(p), withIntermediateDirectories: true)
        }
    }

    /// A repository with a built binary in it, and a bare folder elsewhere.
    func testHomeIsFoundAboveTheExecutable() throws {
        let root = try scratchFolder()
        let repo = root.appendingPathComponent("repo"), bare = root.appendingPathComponent("bare")
        try makeFolders(repo, ["Tasks", "Checkpoints", ".build/x86_64-unknown-linux-gnu/debug"])
        try makeFolders(bare, [""])
        let exe = repo.appendingPathComponent(".build/x86_64-unknown-linux-gnu/debug/mae-eval")
        let found = Installation(environment: [:], executable: exe, currentDirectory: bare)
        XCTAssertEqual(found.home.path, repo.path)
        XCTAssertEqual(found.tasks.path, repo.appendingPathComponent("Tasks").path)
        XCTAssertEqual(found.checkpoints.path, repo.appendingPathComponent("Checkpoints").path)
        XCTAssertEqual(found.shapesData.path, repo.appendingPathComponent(".mae-eval/data/shapes").path)
        XCTAssertEqual(found.featureCache.path, repo.appendingPathComponent(".mae-eval/cache/features").path)
        XCTAssertEqual(found.foundBy, "walking up from the executable")
    }

    func testAFolderWithOnlyTasksIsNotTheHome() throws {
        let root = try scratchFolder()
        try makeFolders(root, ["outer/Tasks", "outer/Checkpoints", "outer/inner/Tasks", "outer/inner/bin"])
        let exe = root.appendingPathComponent("outer/inner/bin/mae-eval")
        let found = Installation(environment: [:], executable: exe, currentDirectory: root)
        XCTAssertEqual(found.home.path, root.appendingPathComponent("outer").path, "inner has Tasks/ but no Checkpoints/")
    }

    func testEnvironmentWinsAndCacheCanMove() throws {
        let root = try scratchFolder()
        try makeFolders(root, ["repo/Tasks", "repo/Checkpoints", "repo/bin", "elsewhere"])
        let exe = root.appendingPathComponent("repo/bin/mae-eval")
        let env = ["MAE_EVAL_HOME": "elsewhere", "MAE_EVAL_CACHE": "cache-here"]
        let found = Installation(environment: env, executable: exe, currentDirectory: root)
        XCTAssertEqual(found.home.path, root.appendingPathComponent("elsewhere").path)
        XCTAssertEqual(found.foundBy, "MAE_EVAL_HOME")
        XCTAssertEqual(found.featureCache.path, root.appendingPathComponent("cache-here/features").path,
                       "relative paths are taken from the current folder")
        XCTAssertEqual(found.shapesData.path, root.appendingPathComponent("elsewhere/.mae-eval/data/shapes").path)
    }

    func testFallsBackToTheCurrentFolder() throws {
        let root = try scratchFolder()
        try makeFolders(root, ["bin"])
        let found = Installation(environment: ["MAE_EVAL_HOME": ""], executable: root.appendingPathComponent("bin/mae-eval"),
                                 currentDirectory: root)
        XCTAssertEqual(found.home.path, root.path)
        XCTAssertEqual(found.foundBy, "falling back to the current folder")
        XCTAssertEqual(Installation(environment: [:], executable: nil, currentDirectory: root).home.path, root.path)
    }

    /// The test process runs inside the repository: its shipped task specs are found from there.
    func testThisInstallationHoldsTheShippedDefaults() throws {
        XCTAssertTrue(FileManager.default.fileExists(atPath: TaskSpec.folder.appendingPathComponent("shapes-linprobe.yaml").path),
                      TaskSpec.folder.path)
        XCTAssertTrue(FileManager.default.fileExists(atPath: defaultMAECheckpoint.path), defaultMAECheckpoint.path)
    }

    // MARK: - --threads, --img-size

    func testThreadsAreSetForTheCallAndRestored() throws {
        let before = Parallel.workers
        do {
            let threads = try ComputeThreads(1)
            XCTAssertEqual(Parallel.workers, 1)
            threads.restore()
        }
        XCTAssertEqual(Parallel.workers, before)
        for bad in [0, -1, ComputeThreads.limit + 1] {
            XCTAssertThrowsError(try ComputeThreads(bad)) { XCTAssertTrue("\($0)".contains("--threads"), "\($0)") }
        }
        XCTAssertEqual(Parallel.workers, before, "a refused count changes nothing")
        _ = try ComputeThreads(nil)
        XCTAssertEqual(Parallel.workers, before)
    }

    func testExtractRefusesBadThreadsBeforeWork() throws {
        var o = ExtractOptions(checkpoint: fixtureURL("mae_tiny.safetensors"), data: URL(fileURLWithPath: "/nonexistent"),
                               out: URL(fileURLWithPath: "/nonexistent/out.safetensors"))
        o.threads = 0
        XCTAssertThrowsError(try runExtract(o)) { XCTAssertTrue("\($0)".hasPrefix("--threads must be between 1 and"), "\($0)") }
    }

    func testImageSizeOverridesTheTask() throws {
        var o = TransferOptions()
        XCTAssertEqual(try o.taskSpec(default: "shapes-linprobe").dataset.imgSize, 32)
        o.imgSize = 48
        XCTAssertEqual(try o.taskSpec(default: "shapes-linprobe").dataset.imgSize, 48)
        o.imgSize = 0
        XCTAssertThrowsError(try o.taskSpec(default: "shapes-linprobe")) { XCTAssertTrue("\($0)".contains("--img-size"), "\($0)") }
    }

    // MARK: - Version

    func testVersionNamesCommitBLASAndCPU() {
        XCTAssertEqual(MAEEvalVersion.commit(environment: [:]), "unknown")
        XCTAssertEqual(MAEEvalVersion.commit(environment: ["MAE_EVAL_COMMIT": " 3f2a9c1\n"]), "3f2a9c1")
        let lines = MAEEvalVersion.text.split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
        XCTAssertTrue(lines[0].hasPrefix("mae-eval \(MAEEvalVersion.number) ("), String(lines[0]))
        XCTAssertTrue(lines[1].hasPrefix("BLAS: OpenBLAS "), String(lines[1]))
        XCTAssertEqual(String(lines[2]), "bf16: " + BF16Info.current.summary)
        XCTAssertTrue(lines[2].contains(", ISA "), String(lines[2]))
        XCTAssertTrue(lines[3].hasPrefix("CPU: "), String(lines[3]))
    }

    func testBLASInfoIsReadFromOpenBLAS() {
        let blas = BLASInfo.current
        XCTAssertEqual(blas.library, "OpenBLAS")
        XCTAssertTrue(blas.version.first?.isNumber == true, blas.version)
        XCTAssertFalse(blas.kernel.isEmpty)
        XCTAssertNotEqual(blas.kernel, "unknown")
        let parsed = BLASInfo(config: "OpenBLAS 0.3.26 NO_AFFINITY Zen MAX_THREADS=64", kernel: "Zen ")
        XCTAssertEqual(parsed, BLASInfo(config: "OpenBLAS 0.3.26", kernel: "Zen"))
        XCTAssertEqual(parsed.summary, "OpenBLAS 0.3.26, kernel Zen")
        XCTAssertEqual(BLASInfo(config: "", kernel: "").summary, "OpenBLAS unknown, kernel unknown")
    }

    func testMetricsRecordVersionAndBLAS() throws {
        let m = TransferMetrics(
            task: "t", evaluation: "knn", variant: "k 1", checkpoint: "c", checkpointHash: "h", method: "mae", role: "checkpoint",
            top1: 1, top5: 2, seed: 0, recipe: "r", dataset: "d", trainData: "a", valData: "b", trainImages: 1, valImages: 1,
            classes: 2, pooling: "cls", selected: nil, grid: nil, protocolChecks: [], timings: [:], epochs: 1, created: "now")
        let json = try JSONSerialization.jsonObject(with: JSONEncoder().encode(m)) as? [String: Any]
        XCTAssertEqual(json?["mae_eval_version"] as? String, MAEEvalVersion.described)
        XCTAssertEqual((json?["blas"] as? [String: String])?["library"], "OpenBLAS")
        // A metrics.json of an older version (no such keys) still reads.
        var old = json!
        old["mae_eval_version"] = nil
        old["blas"] = nil
        let decoded = try JSONDecoder().decode(TransferMetrics.self, from: JSONSerialization.data(withJSONObject: old))
        XCTAssertNil(decoded.maeEvalVersion)
        XCTAssertNil(decoded.blas)
    }

    // MARK: - Progress

    func testCountLineStatesDoneTotalRateAndTimeLeft() {
        let line = ProgressLine(enabled: false)
        let text = line.countLine("extracting", done: 5, total: 100, unit: "images", detail: "")
        XCTAssertTrue(text.hasPrefix("extracting   5/100 images  "), text)
        XCTAssertTrue(text.contains(" images/s  left "), text)
        let done = line.countLine("linear probe", done: 10, total: 10, unit: "epochs", detail: "fold 1/1, loss 0.5000")
        XCTAssertTrue(done.hasPrefix("linear probe 10/10 epochs  fold 1/1, loss 0.5000  "), done)
        XCTAssertTrue(done.contains(" took "), done)
    }

    func testFeatureExtractionReportsProgressPerBatch() throws {
        let loaded = try loadVisionTransformer(from: fixtureURL("mae_tiny.safetensors"), options: LoadOptions())
        let folder = try ImageFolder(root: Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!)
        var seen: [Int] = []
        _ = try probeFeatures(model: loaded.model, feature: ProbeFeature(model: loaded.model, requested: .cls, lastBlocks: 1),
                              folder: folder, transform: .eval(size: 32, cropRatio: 1), batchSize: 4) { seen.append($0) }
        XCTAssertEqual(seen, [4, 6])
    }

    func testGridProbeCountsEveryEpochOfEveryFoldAndTheRefit() throws {
        // Two separable classes; 2 folds of 3 epochs + the refit's 3 epochs.
        let train = FeatureSet(features: [1, 0, 0.9, 0.1, 0, 1, 0.1, 0.9, 1, 0.1, 0, 0.8], labels: [0, 0, 1, 1, 0, 1],
                               width: 2, classes: ["a", "b"])
        var g = GridProbeSettings(recipe: RecipeSpec())
        g.lrs = [0.1]; g.wds = [0]; g.epochs = 3; g.batchSize = 2; g.folds = 2
        var lines: [String] = []
        let progress = ProgressLine(enabled: true, interactive: false, sink: { lines.append($0) })
        _ = try gridProbe(train: train, val: train, settings: g, seed: 0, progress: progress)
        XCTAssertEqual(lines.count, 1, "one line when not a terminal: \(lines)")
        XCTAssertTrue(lines[0].hasPrefix("linear probe 9/9 epochs  refit on all of train, loss "), lines[0])
    }
}
