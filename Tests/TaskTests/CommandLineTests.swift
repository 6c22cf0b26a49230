import XCTest
import MAEKernels
import TestSupport

/// The built `mae-eval` binary as a user meets it: exit status and the one-sentence error.
final class CommandLineTests: XCTestCase {
    /// Runs mae-eval (built beside the test bundle by `swift test`), from `cwd` if given (the
    /// feature cache goes there), and returns (status, stdout, stderr).
    func run(_ arguments: [String], in cwd: URL? = nil) throws -> (Int32, String, String) {
        let folder = try XCTUnwrap(Bundle.main.executableURL).deletingLastPathComponent()
        let binary = folder.appendingPathComponent("mae-eval")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("mae-eval is not built beside the tests in \(folder.path)")
        }
        let p = Process()
        p.executableURL = binary
        p.arguments = arguments
        if let cwd { p.currentDirectoryURL = cwd }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func assertOneSentenceFailure(_ arguments: [String], mentions: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, _, err) = try run(arguments)
        XCTAssertNotEqual(status, 0, "exit status", file: file, line: line)
        let lines = err.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, "one line on stderr, got: \(err)", file: file, line: line)
        XCTAssertTrue(err.contains(mentions), "stderr should mention \(mentions): \(err)", file: file, line: line)
        XCTAssertFalse(err.contains("Fatal error") || err.contains("Stack dump"), "no crash", file: file, line: line)
    }

    let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    func temporaryFolder() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cli-\(UUID())")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func temporaryFile(_ bytes: [UInt8], _ name: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID())-\(name)")
        try Data(bytes).write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func testInfoDescribesTheFixture() throws {
        let (status, out, _) = try run(["info", fixtureURL("mae_tiny.safetensors").path])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(out.contains("safetensors"), out)
        XCTAssertTrue(out.lowercased().contains("decoder"), out)
    }

    func testBadCheckpointsGetOneSentence() throws {
        let real = try Data(contentsOf: fixtureURL("mae_tiny.pth"))
        var random = RandomStream(seed: 9)
        let cases: [(URL, String)] = [
            (try temporaryFile([], "empty.safetensors"), "empty.safetensors"),
            (try temporaryFile(Array(real.prefix(real.count / 2)), "truncated.pth"), "truncated.pth"),
            (try temporaryFile((0..<4096).map { _ in UInt8(truncatingIfNeeded: random.next()) }, "noise.pth"), "noise.pth"),
            (try temporaryFile([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F] + Array("{}".utf8), "huge.safetensors"), "huge.safetensors"),
            (URL(fileURLWithPath: "/nonexistent/x.pth"), "/nonexistent/x.pth"),
        ]
        for (url, name) in cases {
            try assertOneSentenceFailure(["info", url.path], mentions: name)
        }
    }

    /// kNN refuses what it cannot do: k above the train size, a non-finite or non-positive T,
    /// and the shared --epochs / --seed it has no use for; train = val runs with a warning.
    func testKNNRefusesBadFlagsAndWarnsWhenTrainIsVal() throws {
        let folder = Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!.path
        let work = try temporaryFolder()
        let base = ["knn", "--checkpoint", fixtureURL("mae_tiny.safetensors").path,
                    "--task", repoRoot.appendingPathComponent("Tasks/shapes-knn.yaml").path,
                    "--out-dir", work.appendingPathComponent("runs").path, "--no-report"]
        try assertOneSentenceFailure(["knn", "--epochs", "3"], mentions: "--epochs does nothing for kNN")
        try assertOneSentenceFailure(["knn", "--seed", "1"], mentions: "--seed does nothing for kNN")
        try assertOneSentenceFailure(["knn", "--seeds", "0,1"], mentions: "--seeds does nothing for kNN")
        try assertOneSentenceFailure(base + ["--train-data", folder, "--val-data", folder, "--temperature", "inf"],
                                     mentions: "--temperature must be a finite positive number, not inf")
        try assertOneSentenceFailure(base + ["--train-data", folder, "--val-data", folder, "--temperature", "0"],
                                     mentions: "--temperature must be a finite positive number")
        let (status, out, err) = try run(base + ["--train-data", folder, "--val-data", folder, "--k", "100"], in: work)
        XCTAssertEqual(status, 1)
        XCTAssertTrue(err.contains("error: --k 100 is more neighbours than the 6 train images of \(folder)."), err)
        XCTAssertEqual(out, "")
        let (ok, runOut, warnings) = try run(base + ["--train-data", folder, "--val-data", folder, "--k", "3"], in: work)
        XCTAssertEqual(ok, 0, warnings)
        XCTAssertTrue(warnings.contains("warning: train and val are the same folder \(folder)"), warnings)
        XCTAssertTrue(runOut.contains("shapes-knn/k-3-t-0-07-cls/"), runOut)
    }

    /// seg-eval bounds the class count before allocating; report refuses a missing --runs folder.
    func testSegEvalAndReportRefuseBadArguments() throws {
        let work = try temporaryFolder()
        try assertOneSentenceFailure(["seg-eval", "--gt", work.path, "--pred", work.path, "--num-classes", "2000000000"],
                                     mentions: "--num-classes 2000000000 exceeds 65536")
        try assertOneSentenceFailure(["seg-eval", "--gt", work.path, "--pred", work.path, "--num-classes", "3", "--ignore-index=-1"],
                                     mentions: "--ignore-index -1")
        let missing = work.appendingPathComponent("nope").path
        try assertOneSentenceFailure(["report", "--runs", missing, "--out", work.appendingPathComponent("r.md").path],
                                     mentions: "\(missing) is not a folder of runs")
        XCTAssertFalse(FileManager.default.fileExists(atPath: work.appendingPathComponent("r.md").path))
    }

    /// A grid point that diverges is recorded as such (not as a NaN loss, which JSON cannot hold) and
    /// never chosen; the run still succeeds on the points that converged.
    func testLinprobeRecordsADivergedGridPointWithoutChoosingIt() throws {
        let folder = Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!.path
        let work = try temporaryFolder()
        let spec = try String(contentsOf: repoRoot.appendingPathComponent("Tasks/shapes-linprobe.yaml"), encoding: .utf8)
            .replacingOccurrences(of: "lr_grid: [0.01, 0.03, 0.1, 0.3, 1.0, 3.0]", with: "lr_grid: [3.0e38, 0.1]")
            .replacingOccurrences(of: "wd_grid: [0.0, 0.00001, 0.00003, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.03, 0.1, 0.3, 1.0]",
                                  with: "wd_grid: [0.0]")
        XCTAssertTrue(spec.contains("[3.0e38, 0.1]") && spec.contains("wd_grid: [0.0]"), "the shipped spec's grid lines changed")
        let task = work.appendingPathComponent("lp.yaml")
        try spec.write(to: task, atomically: true, encoding: .utf8)
        let (status, out, err) = try run(["linprobe", "--checkpoint", fixtureURL("mae_tiny.safetensors").path, "--task", task.path,
                                          "--train-data", folder, "--val-data", folder, "--epochs", "2",
                                          "--out-dir", work.appendingPathComponent("runs").path, "--no-report"], in: work)
        XCTAssertEqual(status, 0, err)
        let metrics = URL(fileURLWithPath: out.trimmingCharacters(in: .whitespacesAndNewlines)).appendingPathComponent("metrics.json")
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: metrics)) as? [String: Any])
        let grid = try XCTUnwrap(json["grid"] as? [[String: Double]])
        XCTAssertEqual(grid.map { $0["diverged"] }, [1, nil])
        XCTAssertNil(grid[0]["heldout_loss"])
        XCTAssertEqual((json["selected"] as? [String: Double])?["lr"], 0.1)
        XCTAssertTrue((json["recipe"] as? String)?.hasSuffix("; retrained head: 2 SGD steps (2 epochs x 1 steps per epoch)") ?? false,
                      "\(json["recipe"] ?? "")")
    }

    func testBenchRefusesBadShapesAndPresets() throws {
        try assertOneSentenceFailure(["bench", "--model", "vit_gigantic", "--iters", "1"], mentions: "vit_gigantic")
        try assertOneSentenceFailure(["bench", "--model", "vit_tiny_patch16", "--img-size", "225", "--iters", "1"],
                                     mentions: "divisible")
        try assertOneSentenceFailure(["bench", "--mode", "sideways"], mentions: "--mode")
    }

    func testBenchPrintsOneJSONLine() throws {
        let (status, out, _) = try run(["bench", "--model", "vit_shapes_patch4", "--img-size", "32", "--batch-size", "2",
                                        "--mode", "pretrain", "--iters", "1"])
        XCTAssertEqual(status, 0)
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        for key in ["img_per_s", "model", "mode", "batch_size", "threads"] { XCTAssertNotNil(json?[key], key) }
    }
}
