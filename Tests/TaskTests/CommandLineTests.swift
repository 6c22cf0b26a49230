import XCTest
import MAEData
import MAEKernels
import MAETasks
import TestSupport

/// The built `mae-eval` binary as a user meets it: exit status and the one-sentence error.
final class CommandLineTests: XCTestCase {
    /// Runs mae-eval (built beside the test bundle by `swift test`) and returns (status, stdout, stderr).
    /// Run in a `directory`, its feature cache goes there too (unless `environment` names one), so a
    /// test never writes into the installation's cache.
    func run(_ arguments: [String], in directory: URL? = nil, environment: [String: String] = [:]) throws -> (Int32, String, String) {
        var environment = environment
        if let directory, environment["MAE_EVAL_CACHE"] == nil {
            environment["MAE_EVAL_CACHE"] = directory.appendingPathComponent(".mae-eval-cache").path
        }
        let folder = try XCTUnwrap(Bundle.main.executableURL).deletingLastPathComponent()
        let binary = folder.appendingPathComponent("mae-eval")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("mae-eval is not built beside the tests in \(folder.path)")
        }
        let p = Process()
        p.executableURL = binary
        p.arguments = arguments
        if let directory { p.currentDirectoryURL = directory }
        if !environment.isEmpty { p.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func assertOneSentenceFailure(_ arguments: [String], mentions: String, in folder: URL? = nil,
                                  file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, _, err) = try run(arguments, in: folder)
        XCTAssertNotEqual(status, 0, "exit status", file: file, line: line)
        let lines = err.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, "one line on stderr, got: \(err)", file: file, line: line)
        XCTAssertTrue(err.contains(mentions), "stderr should mention \(mentions): \(err)", file: file, line: line)
        XCTAssertFalse(err.contains("Fatal error") || err.contains("Stack dump"), "no crash", file: file, line: line)
    }

    let repoRoot = repositoryRoot


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
        let work = try scratchFolder()
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
        let work = try scratchFolder()
        try assertOneSentenceFailure(["seg-eval", "--gt", work.path, "--pred", work.path, "--num-classes", "2000000000"],
                                     mentions: "--num-classes 2000000000 exceeds 65536")
        try assertOneSentenceFailure(["seg-eval", "--gt", work.path, "--pred", work.path, "--num-classes", "3", "--ignore-index=-1"],
                                     mentions: "--ignore-index -1")
        let missing = work.appendingPathComponent("nope").path
        try assertOneSentenceFailure(["report", "--runs", missing, "--out", work.appendingPathComponent("r.md").path],
                                     mentions: "\(missing) is not a folder of runs")
        XCTAssertFalse(FileManager.default.fileExists(atPath: work.appendingPathComponent("r.md").path))
    }

    /// seg-eval reads label maps through MAEData's decoder (8- and 16-bit gray), prints mmseg's numbers,
    /// writes --out, and refuses an RGB prediction in one sentence naming it.
    func testSegEvalScoresLabelMapsAndRefusesRGB() throws {
        let work = try scratchFolder()
        let gt = work.appendingPathComponent("gt"), pred = work.appendingPathComponent("pred")
        for folder in [gt, pred] { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) }
        try LabelMapCodec.writePNG(LabelMap(width: 2, height: 2, labels: [0, 1, 1, 2]), to: gt.appendingPathComponent("a.png"))
        try LabelMapCodec.writePNG(LabelMap(width: 2, height: 2, labels: [0, 1, 2, 2]), to: pred.appendingPathComponent("a.png"))
        // 16-bit maps: 300 is outside 0..<3, so that ground-truth pixel counts in no class but is labelled.
        try LabelMapCodec.writePNG(LabelMap(width: 1, height: 2, labels: [300, 2]), to: gt.appendingPathComponent("b.png"))
        try LabelMapCodec.writePNG(LabelMap(width: 1, height: 2, labels: [0, 2]), to: pred.appendingPathComponent("b.png"))
        let out = work.appendingPathComponent("m.json")
        let (status, text, err) = try run(["seg-eval", "--gt", gt.path, "--pred", pred.path, "--num-classes", "3",
                                           "--out", out.path])
        XCTAssertEqual(status, 0, err)
        let lines = text.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "2 label maps")
        // IoU: class 0 1/2 (the 300 pixel is predicted 0), class 1 1/2, class 2 2/3; Acc 1/1, 1/2, 2/2;
        // aAcc: 4 right of the 5 pixels whose label is a class.
        XCTAssertEqual(lines.last, "aAcc 80.00  mIoU 55.56  mAcc 83.33", text)
        let json = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: out)) as? [String: Any])
        XCTAssertEqual(try XCTUnwrap(json["mIoU"] as? Double), 55.556, accuracy: 0.001)
        try ImageCodec.writePNG(RGBImage(width: 2, height: 2), to: pred.appendingPathComponent("a.png"))
        try assertOneSentenceFailure(["seg-eval", "--gt", gt.path, "--pred", pred.path, "--num-classes", "3"],
                                     mentions: "\(pred.appendingPathComponent("a.png").path): is an RGB PNG")
    }

    /// A grid point that diverges is recorded as such (not as a NaN loss, which JSON cannot hold) and
    /// never chosen; the run still succeeds on the points that converged.
    func testLinprobeRecordsADivergedGridPointWithoutChoosingIt() throws {
        let folder = Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!.path
        let work = try scratchFolder()
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

    /// Enum flags parse into the library's enums; another word is one sentence listing the values.
    func testEnumFlagsRefuseOtherWordsInOneSentence() throws {
        try assertOneSentenceFailure(["bench", "--mode", "sideways"], mentions: "error: --mode must be forward, train or pretrain, not 'sideways'.")
        try assertOneSentenceFailure(["extract", "--checkpoint", "c", "--data", "d", "--out", "o", "--pool", "max"],
                                     mentions: "error: --pool must be cls or avg, not 'max'.")
        try assertOneSentenceFailure(["linprobe", "--mode", "frozen"], mentions: "error: --mode must be cached or augmented, not 'frozen'.")
        try assertOneSentenceFailure(["pretrain", "--method", "dino", "--out-dir", "never"],
                                     mentions: "error: --method must be mae or supervised, not 'dino'.")
        try assertOneSentenceFailure(["coco-eval", "--gt", "g", "--dt", "d", "--iou-type", "keypoints"],
                                     mentions: "error: --iou-type must be bbox or segm, not 'keypoints'.")
        // The dense commands take the shared --precision: a bad value is refused, bf16 parses and
        // reaches the library (which then names the missing --weights).
        for command in ["segment", "detect"] {
            try assertOneSentenceFailure([command, "--precision", "fp16"], mentions: "error: --precision must be fp32 or bf16, not 'fp16'.")
            try assertOneSentenceFailure([command, "--eval-only", "--precision", "bf16"], mentions: "--eval-only needs --weights")
        }
    }

    func testBenchPrintsOneJSONLine() throws {
        let (status, out, _) = try run(["bench", "--model", "vit_shapes_patch4", "--img-size", "32", "--batch-size", "2",
                                        "--mode", "pretrain", "--iters", "1", "--threads", "1"])
        XCTAssertEqual(status, 0)
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        for key in ["img_per_s", "model", "mode", "batch_size", "threads"] { XCTAssertNotNil(json?[key], key) }
        XCTAssertEqual(json?["threads"] as? Int, 1)
        XCTAssertEqual(json?["precision"] as? String, "fp32")
        let blas = json?["blas"] as? [String: String]
        XCTAssertEqual(blas?["library"], "OpenBLAS")
        XCTAssertNotNil(blas?["version"])
        XCTAssertNotNil(blas?["kernel"])
    }

    // MARK: - The command line itself

    func testUnknownSubcommandIsOneSentenceListingTheCommands() throws {
        try assertOneSentenceFailure(["frobnicate"], mentions: "'frobnicate' is not a mae-eval command")
        let (status, _, err) = try run(["frobnicate"])
        XCTAssertEqual(status, 1)
        for name in ["linprobe", "knn", "finetune", "extract", "info", "data"] { XCTAssertTrue(err.contains(name), err) }
        try assertOneSentenceFailure(["data", "frob"], mentions: "'frob' is not a mae-eval data command; the commands are shapes, loader-bench.")
        try assertOneSentenceFailure(["help", "frobnicate"], mentions: "'frobnicate' is not a mae-eval command")
        XCTAssertEqual(try run(["help", "knn"]).0, 0)
        let (bare, out, _) = try run([])
        XCTAssertEqual(bare, 0, "no arguments still prints the help")
        XCTAssertTrue(out.contains("USAGE"), out)
    }

    func testVersionNamesReleaseCommitBLASAndCPU() throws {
        let (status, out, _) = try run(["--version"], environment: ["MAE_EVAL_COMMIT": "abc1234"])
        XCTAssertEqual(status, 0)
        let lines = out.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "mae-eval \(MAEEvalVersion.number) (abc1234)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("BLAS: OpenBLAS ") && $0.contains(", kernel ") }, out)
        XCTAssertTrue(lines.contains { $0.hasPrefix("CPU: ") }, out)
    }

    /// `--version` says how the kernel was chosen: the user's OPENBLAS_CORETYPE is kept, and a process that
    /// mae-eval re-executed to change the kernel (its environment marker set) says what it switched from.
    func testVersionSaysHowTheBLASKernelWasChosen() throws {
        let (userStatus, user, _) = try run(["--version"], environment: ["OPENBLAS_CORETYPE": "Haswell"])
        XCTAssertEqual(userStatus, 0)
        XCTAssertTrue(user.contains(", kernel Haswell (OPENBLAS_CORETYPE set by the user; CPU "), user)
        let (status, out, _) = try run(["--version"], environment: ["OPENBLAS_CORETYPE": "Haswell",
                                                                    "MAE_EVAL_BLAS_SWITCHED": "Prescott>Haswell"])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(out.contains(", kernel Haswell (switched from Prescott by mae-eval; CPU "), out)
    }

    /// From a bare folder the default task and checkpoints are the installation's, and explicit data works.
    func testRunsFromABareFolder() throws {
        let bare = FileManager.default.temporaryDirectory.appendingPathComponent("bare-\(UUID())")
        try FileManager.default.createDirectory(at: bare, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: bare) }
        let images = Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!.path
        let (status, out, err) = try run(["knn", "--checkpoint", fixtureURL("mae_tiny.safetensors").path, "--train-data", images,
                                          "--val-data", images, "--k", "3", "--threads", "1", "--no-report"],
                                         in: bare, environment: ["MAE_EVAL_CACHE": bare.appendingPathComponent("cache").path])
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.hasPrefix(bare.appendingPathComponent("runs/shapes-knn").path) ||
                      out.contains("/runs/shapes-knn/"), "run folder under the current folder: \(out)")
        XCTAssertTrue(FileManager.default.fileExists(atPath: bare.appendingPathComponent("runs/shapes-knn").path), out)
        XCTAssertFalse(FileManager.default.fileExists(atPath: bare.appendingPathComponent(".mae-eval").path),
                       "nothing of the installation is made in the current folder")
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: bare.appendingPathComponent("cache/features").path).count, 1,
                       "the features are cached under MAE_EVAL_CACHE")
        XCTAssertTrue(err.contains("extracting 6/6 images"), err)
        // The shipped checkpoints are found too (the check runs before any work).
        try assertOneSentenceFailure(["linprobe", "--img-size", "0"], mentions: "--img-size must be positive", in: bare)
    }

    func testEveryModelCommandTakesImageSizeAndThreads() throws {
        let ckpt = fixtureURL("mae_tiny.safetensors").path
        let images = Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!.path
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("never-\(UUID())").path
        for command in [["linprobe"], ["knn"], ["finetune"],
                        ["extract", "--checkpoint", ckpt, "--data", images, "--out", out + ".safetensors"],
                        ["visualize", "--checkpoint", ckpt, "--data", images, "--out", out + ".png"]] {
            try assertOneSentenceFailure(command + ["--threads", "0"], mentions: "--threads must be between 1 and")
        }
        for command in [["linprobe"], ["knn"], ["finetune"]] {
            try assertOneSentenceFailure(command + ["--img-size", "-8", "--threads", "1"], mentions: "--img-size must be positive")
        }
        let extract = ["extract", "--checkpoint", ckpt, "--data", images, "--out", out + ".safetensors", "--img-size", "36"]
        try assertOneSentenceFailure(extract, mentions: "not divisible by patch size 8.")
        XCTAssertFalse(try run(extract).2.contains(".."), "one period")
        try assertOneSentenceFailure(["visualize", "--checkpoint", ckpt, "--data", images, "--out", out + ".png",
                                      "--img-size", "36"], mentions: "not divisible by patch size 8.")
        XCTAssertFalse(FileManager.default.fileExists(atPath: out + ".png"))
    }

    /// The command line holds no library code: no image codec and no metric is reached but through the libraries.
    func testCLISourcesImportNeitherCPNGNorMAEMetrics() throws {
        let sources = repoRoot.appendingPathComponent("Sources/mae-eval")
        let files = try XCTUnwrap(FileManager.default.enumerator(at: sources, includingPropertiesForKeys: nil))
            .compactMap { $0 as? URL }.filter { $0.pathExtension == "swift" }
        XCTAssertGreaterThan(files.count, 10, "the CLI sources are found under \(sources.path)")
        for file in files {
            let imports = try String(contentsOf: file, encoding: .utf8).split(separator: "\n")
                .filter { $0.hasPrefix("import ") }.map { $0.dropFirst(7).trimmingCharacters(in: .whitespaces) }
            XCTAssertFalse(imports.contains("CPNG") || imports.contains("MAEMetrics"), "\(file.lastPathComponent) imports \(imports)")
        }
    }

    func testMessagesNameTheValue() throws {
        try assertOneSentenceFailure(["finetune", "--epochs", "-1"], mentions: "--epochs must be positive")
        try assertOneSentenceFailure(["extract", "--checkpoint", "c", "--data", "d", "--out", "o", "--batch-size", "-4"],
                                     mentions: "--batch-size must be positive")
        try assertOneSentenceFailure(["info", "/nonexistent/x.pth"], mentions: "error: /nonexistent/x.pth")
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("scenes-\(UUID())").path
        try assertOneSentenceFailure(["data", "shapes", "--out", folder, "--scene-size", "1"], mentions: "--scene-size 16...2048")
        XCTAssertFalse(FileManager.default.fileExists(atPath: folder))
        let (_, help, _) = try run(["data", "shapes", "--help"])
        XCTAssertTrue(help.contains("train/<class>/*.png, val/<class>/*.png"),
                      "sentences wrap at the terminal width, not mid-sentence in the source: \(help)")
    }

    /// A transfer command writes the report of its runs folder after its runs (`--report`), and none
    /// with `--no-report`.
    func testTransferCommandsWriteTheReportOnceTheirRunsAreDone() throws {
        let work = try scratchFolder()
        let images = Bundle.module.url(forResource: "Fixtures/imagefolder", withExtension: nil)!.path
        let base = ["knn", "--checkpoint", fixtureURL("mae_tiny.safetensors").path, "--train-data", images, "--val-data", images,
                    "--k", "3", "--threads", "1", "--out-dir", work.appendingPathComponent("runs").path]
        let environment = ["MAE_EVAL_CACHE": work.appendingPathComponent("cache").path]
        let report = work.appendingPathComponent("r.md")
        let (status, _, err) = try run(base + ["--report", report.path], in: work, environment: environment)
        XCTAssertEqual(status, 0, err)
        let md = try String(contentsOf: report, encoding: .utf8)
        XCTAssertTrue(md.contains("## shapes-knn: knn, k 3, T 0.07, cls"), md)
        try FileManager.default.removeItem(at: report)
        let (again, _, err2) = try run(base + ["--no-report"], in: work, environment: environment)
        XCTAssertEqual(again, 0, err2)
        XCTAssertFalse(FileManager.default.fileExists(atPath: report.path))
        XCTAssertFalse(FileManager.default.fileExists(atPath: work.appendingPathComponent("runs/classification.md").path))
    }
}
