import Foundation
import MAEData
import MAEModels
@testable import MAETasks
import XCTest

/// `mae-eval all` end to end through the built binary, on tiny random backbones (16 px, width 16,
/// depth 2) and a 16 px Shapes set: skip on rerun, kill -9 and resume to the same numbers, the
/// Slurm script's units reproducing the one-process report.
final class AllTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-all-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    func binary() throws -> URL {
        let folder = try XCTUnwrap(Bundle.main.executableURL).deletingLastPathComponent()
        let binary = folder.appendingPathComponent("mae-eval")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("mae-eval is not built beside the tests in \(folder.path)")
        }
        return binary
    }

    /// Starts `executable` (default: mae-eval) in the scratch folder; output to files, so a killed
    /// child's pipe never blocks.
    func start(_ arguments: [String], executable: URL? = nil, environment: [String: String] = [:]) throws -> (Process, URL, URL) {
        let out = scratch.appendingPathComponent("out-\(UUID().uuidString)"), err = scratch.appendingPathComponent("err-\(UUID().uuidString)")
        for f in [out, err] { FileManager.default.createFile(atPath: f.path, contents: nil) }
        let p = Process()
        p.executableURL = try executable ?? binary()
        p.arguments = arguments
        p.currentDirectoryURL = scratch
        p.environment = ProcessInfo.processInfo.environment
            .merging(["MAE_EVAL_CACHE": scratch.appendingPathComponent("cache").path]) { $1 }.merging(environment) { $1 }
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        return (p, out, err)
    }

    /// Runs to the end and returns standard output and error; fails the test on a non-zero exit.
    @discardableResult
    func run(_ arguments: [String], executable: URL? = nil, environment: [String: String] = [:]) throws -> (out: String, err: String) {
        let (p, out, err) = try start(arguments, executable: executable, environment: environment)
        p.waitUntilExit()
        let texts = (try String(contentsOf: out, encoding: .utf8), try String(contentsOf: err, encoding: .utf8))
        XCTAssertEqual(p.terminationStatus, 0, "\(arguments.joined(separator: " ")) failed: \(texts.1.suffix(2000))")
        return texts
    }

    /// Two tiny random backbones (MAE and supervised by metadata), a 16 px Shapes set (40 train, 20
    /// val) and four tiny task specs over it: cached probe, kNN, 1-shot probe, 2-epoch fine-tuning.
    func setup() throws -> (checkpoints: [String], tasks: String) {
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 40, val: 20, scenesTrain: 0, scenesVal: 0)
        let data = try ShapesDataset.ensure(at: scratch.appendingPathComponent("shapes"), size: 16, seed: 3, counts: counts)
        var paths: [String] = []
        for (seed, method) in [(1, "mae"), (2, "supervised")] {
            let model = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 4, embedDim: 16, depth: 2, numHeads: 2))
            model.initializeWeights(seed: UInt64(seed))
            let url = scratch.appendingPathComponent("tiny_\(method).safetensors")
            try model.save(to: url, metadata: ["method": method])
            paths.append(url.path)
        }
        let dataset = """
            dataset:
              name: shapes
              root: \(data.root.path)
              train: train
              val: val
              img_size: 16
              crop_ratio: 1.0
            """
        let specs = [
            ("tiny-linprobe", "linprobe", "head: {pooling: cls}\nrecipe: {mode: cached, lr_grid: [0.1, 1.0], wd_grid: [0.0, 0.001], epochs: 3, folds: 2}"),
            ("tiny-knn", "knn", "head: {pooling: cls, k: 5, temperature: 0.07}\nrecipe: {}"),
            ("tiny-1shot", "linprobe", "head: {pooling: cls}\nrecipe: {mode: cached, shots: 1, lr_grid: [0.1], wd_grid: [0.0], epochs: 3, folds: 2}"),
            ("tiny-finetune", "finetune", "head: {pooling: avg}\nrecipe: {base_lr: 0.004, batch_size: 8, epochs: 2, warmup_epochs: 1, " +
                "augmentation: {rrc_scale: [0.35, 1.0], flip: true}}"),
        ]
        var files: [String] = []
        for (name, p, body) in specs {
            let url = scratch.appendingPathComponent("\(name).yaml")
            try "name: \(name)\nprotocol: \(p)\n\(dataset)\n\(body)\nmetrics: [top1, top5]\nseeds: [0]\n".write(to: url, atomically: true, encoding: .utf8)
            files.append(url.path)
        }
        return (paths, files.joined(separator: ","))
    }

    func arguments(_ s: (checkpoints: [String], tasks: String), out: String, seeds: String = "0,1") -> [String] {
        ["all", "--checkpoint", s.checkpoints[0], "--baseline", s.checkpoints[1], "--tasks", s.tasks, "--seeds", seeds,
         "--out-dir", out, "--threads", "1", "--bootstrap-resamples", "500"]
    }

    /// What must not change between runs: each unit's metrics (without timings and dates) and every
    /// delta with its interval.
    func numbers(_ out: String) throws -> [String: Any] {
        let url = scratch.appendingPathComponent(out).appendingPathComponent("transfer.json")
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let units = try XCTUnwrap(object["units"] as? [[String: Any]]).map { u -> [String: Any] in
            var m = (u["metrics"] as? [String: Any]) ?? [:]
            for volatile in ["timings", "created", "grid", "protocol_checks"] { m[volatile] = nil }
            return ["unit": u["unit"]!, "run_dir": u["run_dir"]!, "metrics": m]
        }
        return ["units": units, "deltas": object["deltas"]!]
    }

    func assertSameNumbers(_ a: String, _ b: String, _ message: String = "", file: StaticString = #filePath, line: UInt = #line) throws {
        let x = try numbers(a), y = try numbers(b)
        XCTAssertEqual(try JSONSerialization.data(withJSONObject: x, options: .sortedKeys),
                       try JSONSerialization.data(withJSONObject: y, options: .sortedKeys), message, file: file, line: line)
    }

    /// The summary table of a transfer.md (it holds no wall times).
    func summary(_ out: String) throws -> String {
        let text = try String(contentsOf: scratch.appendingPathComponent(out).appendingPathComponent("transfer.md"), encoding: .utf8)
        let start = try XCTUnwrap(text.range(of: "## Summary"))
        let end = try XCTUnwrap(text.range(of: "\n## ", range: start.upperBound..<text.endIndex))
        return String(text[start.lowerBound..<end.lowerBound])
    }

    func testAllRunsEveryUnitThenARerunDoesNoWork() throws {
        let s = try setup()
        let first = try run(arguments(s, out: "a"))
        XCTAssertEqual(first.out.split(separator: "\n").map(String.init), ["a/transfer.md", "a/transfer.json"])
        // 4 tasks x 2 backbones x 2 seeds, kNN once per backbone: 14 units.
        XCTAssertTrue(first.err.contains("all: unit 14/14"), first.err.suffix(3000).description)
        let units = try XCTUnwrap((try numbers("a"))["units"] as? [[String: Any]])
        XCTAssertEqual(units.count, 14)
        // Every run's per-image hits are its top-1, over the 20 val images.
        for unit in units {
            let dir = scratch.appendingPathComponent("a").appendingPathComponent(try XCTUnwrap(unit["run_dir"] as? String))
            let perImage = try PerImageResults.read(from: dir)
            let correct = try XCTUnwrap(perImage.correct)
            XCTAssertEqual(correct.count, 20)
            let top1 = try XCTUnwrap((unit["metrics"] as? [String: Any])?["top1"] as? Double)
            XCTAssertEqual(100 * Double(correct.reduce(0, +)) / 20, top1, accuracy: 1e-9, dir.path)
        }
        let md = try summary("a")
        for task in ["tiny-linprobe", "tiny-knn", "tiny-1shot", "tiny-finetune"] { XCTAssertTrue(md.contains("| \(task) |"), md) }
        XCTAssertTrue(md.contains("tiny_mae (mae)") && md.contains("Δ tiny_mae − tiny_supervised (95% CI)"), md)
        let records = try FileManager.default.subpathsOfDirectory(atPath: scratch.appendingPathComponent("a/units").path)
            .filter { $0.hasSuffix(".unit.json") }.sorted()
        XCTAssertEqual(records.count, 14)
        let before = try records.map { try Data(contentsOf: scratch.appendingPathComponent("a/units/\($0)")) }

        let again = try run(arguments(s, out: "a"))
        XCTAssertTrue(again.err.contains("all: 14 of 14 units already done, skipped"), again.err)
        XCTAssertFalse(again.err.contains("all: unit "), "a rerun runs no unit: \(again.err)")
        XCTAssertEqual(try records.map { try Data(contentsOf: scratch.appendingPathComponent("a/units/\($0)")) }, before)
        XCTAssertEqual(try summary("a"), md)
        // One unit alone, already done: nothing to do, its run folder printed.
        let one = try run(arguments(s, out: "a") + ["--unit", "3"])
        XCTAssertTrue(one.out.contains("a/units/"), one.out)
    }

    func testAllKilledAtRandomMomentsEndsWithTheNumbersOfAnUnbrokenRun() throws {
        let s = try setup()
        let begin = Date()
        try run(arguments(s, out: "unbroken", seeds: "0"))
        let seconds = Date().timeIntervalSince(begin)
        var story: [String] = []
        var generator = SystemRandomNumberGenerator()
        for attempt in 0..<3 {
            let (p, _, _) = try start(arguments(s, out: "killed", seeds: "0"))
            let delay = Double.random(in: 0.2...max(0.3, seconds * 0.8), using: &generator)
            Thread.sleep(forTimeInterval: delay)
            if p.isRunning { kill(p.processIdentifier, SIGKILL); story.append("attempt \(attempt) killed after \(String(format: "%.2f", delay)) s") }
            p.waitUntilExit()
        }
        XCTAssertFalse(story.isEmpty, "the first attempt is killed before an unbroken run's duration")
        try run(arguments(s, out: "killed", seeds: "0"))
        try assertSameNumbers("unbroken", "killed", story.joined(separator: "; "))
        XCTAssertEqual(try summary("unbroken"), try summary("killed"), story.joined(separator: "; "))
    }

    func testSlurmScriptUnitsRunLocallyReproduceOneProcessAll() throws {
        let s = try setup()
        try run(arguments(s, out: "one", seeds: "0"))
        let script = scratch.appendingPathComponent("sweep.sbatch")
        let emitted = try run(arguments(s, out: "sweep", seeds: "0") + ["--emit-slurm", script.path, "--partition", "cpu",
                                                                          "--time", "1:00:00", "--cpus-per-task", "2"])
        XCTAssertEqual(emitted.out.trimmingCharacters(in: .whitespacesAndNewlines), script.path)
        let text = try String(contentsOf: script, encoding: .utf8)
        let bash = URL(fileURLWithPath: "/bin/bash")
        try run(["-n", script.path], executable: bash)
        // 4 tasks x 2 backbones, seed 0 (kNN once): 8 units, one array element each.
        XCTAssertTrue(text.contains("#SBATCH --array=0-7") && text.contains("#SBATCH --partition=cpu") &&
                      text.contains("#SBATCH --time=1:00:00") && text.contains("#SBATCH --cpus-per-task=2"), text)
        let elements = text.split(separator: "\n").filter { $0.range(of: #"^  [0-9]+\) UNIT=[0-9]+ ;;"#, options: .regularExpression) != nil }
        XCTAssertEqual(elements.count, 8, text)
        XCTAssertFalse(text.contains("srun"), "one rank per unit runs without srun")
        XCTAssertTrue(text.contains("--dependency=afterok:"), text)
        for k in 0..<8 { try run([script.path], executable: bash, environment: ["SLURM_ARRAY_TASK_ID": String(k)]) }
        let report = try run([script.path, "report"], executable: bash)
        XCTAssertTrue(report.out.contains("sweep/transfer.md"), report.out)
        try assertSameNumbers("one", "sweep")
        XCTAssertEqual(try summary("one"), try summary("sweep"))
        let ranked = scratch.appendingPathComponent("ranked.sbatch")
        try run(arguments(s, out: "sweep", seeds: "0") + ["--emit-slurm", ranked.path, "--ranks-per-unit", "2"])
        XCTAssertTrue(try String(contentsOf: ranked, encoding: .utf8).contains("LAUNCH=(srun --ntasks=2)"))
    }

    /// `--ranks-per-unit 2`: each element launches 2 ranks (srun in an allocation, mpirun outside);
    /// the fine-tuning unit run by hand without Slurm (`SLURM_ARRAY_TASK_ID=K bash FILE`, so under
    /// `mpirun -np 2`) gives the one-process unit's numbers.
    func testSlurmScriptWithTwoRanksPerUnitRunsAUnitUnderMPI() throws {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        guard path.split(separator: ":").contains(where: { FileManager.default.isExecutableFile(atPath: "\($0)/mpirun") }) else {
            throw XCTSkip("mpirun is not on PATH (make deps installs openmpi-bin)")
        }
        let s = try setup()
        let script = scratch.appendingPathComponent("ranked.sbatch")
        try run(arguments(s, out: "ranked", seeds: "0") + ["--emit-slurm", script.path, "--ranks-per-unit", "2", "--cpus-per-task", "1"])
        let text = try String(contentsOf: script, encoding: .utf8)
        let bash = URL(fileURLWithPath: "/bin/bash")
        try run(["-n", script.path], executable: bash)
        XCTAssertTrue(text.contains("#SBATCH --ntasks=2") && text.contains("LAUNCH=(srun --ntasks=2)") &&
                      text.contains("LAUNCH=(mpirun --oversubscribe -np 2)") && text.contains("exec ${LAUNCH[@]} \"$MAE_EVAL\" all"), text)
        let line = try XCTUnwrap(text.split(separator: "\n").first { $0.contains("UNIT=") && $0.contains("finetune") && $0.contains("tiny_mae") },
                                 text)
        let unit = String(try XCTUnwrap(line.split(separator: ")").first)).trimmingCharacters(in: .whitespaces)
        let mpi = ["OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,vader",
                   "OMPI_MCA_plm_rsh_agent": "", "SLURM_CPUS_PER_TASK": "1"]
        try run([script.path], executable: bash, environment: mpi.merging(["SLURM_ARRAY_TASK_ID": unit]) { $1 })
        try run(arguments(s, out: "single", seeds: "0") + ["--unit", unit])
        func metrics(_ out: String) throws -> NSDictionary {
            let root = scratch.appendingPathComponent(out)
            let found = try XCTUnwrap(FileManager.default.subpathsOfDirectory(atPath: root.path).filter { $0.hasSuffix("metrics.json") })
            XCTAssertEqual(found.count, 1, "one unit ran: \(found)")
            var m = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: root.appendingPathComponent(found[0]))) as? [String: Any])
            for volatile in ["timings", "created"] { m[volatile] = nil }
            return m as NSDictionary
        }
        let ranked = try metrics("ranked"), single = try metrics("single")
        XCTAssertEqual(ranked["protocol"] as? String, "finetune")
        XCTAssertEqual(ranked, single)
    }

    func testReportOnlyIsRefusedWhileAUnitIsNotDone() throws {
        let s = try setup()
        let (p, _, err) = try start(arguments(s, out: "partial") + ["--report-only"])
        p.waitUntilExit()
        XCTAssertEqual(p.terminationStatus, 1)
        let message = try String(contentsOf: err, encoding: .utf8)
        XCTAssertTrue(message.contains("14 of the 14 units are not done"), message)
    }
}

extension AllTests {
    /// Bad input is one sentence naming the flag or file, exit 1, before any unit runs.
    func testBadArgumentsAreOneSentence() throws {
        let s = try setup()
        let unknown = scratch.appendingPathComponent("detect.yaml")
        try "name: d\nprotocol: frobnicate\n".write(to: unknown, atomically: true, encoding: .utf8)
        for (extra, mention) in [
            (["--unit", "99"], "--unit 99 is outside the plan's units 0...13"),
            (["--tasks", "no-such-task"], "--tasks: 'no-such-task' is neither a task spec file nor the name of one in"),
            (["--tasks", unknown.path], "protocol 'frobnicate' is not one `all` runs (it runs linprobe, knn, finetune, detect, segment)"),
            (["--emit-slurm", "x.sbatch", "--time", "two hours"], "--time must be a Slurm time limit"),
            (["--emit-slurm", "x.sbatch", "--partition", "a b"], "--partition must be one Slurm partition name"),
            (["--threads", "0"], "--threads must be between 1 and"),
        ] {
            let (p, _, err) = try start(arguments(s, out: "bad") + extra)
            p.waitUntilExit()
            let message = try String(contentsOf: err, encoding: .utf8)
            XCTAssertEqual(p.terminationStatus, 1, message)
            XCTAssertTrue(message.hasPrefix("error: ") && message.contains(mention) && message.split(separator: "\n").count == 1,
                          "\(extra): \(message)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.appendingPathComponent("bad/units").path), "no unit ran")
    }
}
