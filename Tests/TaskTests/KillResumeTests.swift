import Foundation
import MAEData
import MAEFormats
import MAEModels
import MAETasks
import XCTest

/// The built `mae-eval` killed with SIGKILL at random moments (mid-epoch included, with
/// `--checkpoint-every` small) and resumed each time ends with the same weights, byte for byte, and
/// the same log (apart from wall-clock fields) as an unbroken run. Tiny models on tiny data, one
/// compute thread, so each run takes a few seconds in a debug build.
final class KillResumeTests: XCTestCase {
    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-kill-\(UUID().uuidString)")
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

    /// Starts mae-eval with `arguments`; stdout goes to `stdout` (a file, so a killed child's pipe never blocks).
    func start(_ arguments: [String], stdout: URL) throws -> Process {
        let p = Process()
        p.executableURL = try binary()
        p.arguments = arguments
        p.currentDirectoryURL = scratch
        p.environment = ProcessInfo.processInfo.environment.merging(["MAE_EVAL_CACHE": scratch.appendingPathComponent("cache").path]) { $1 }
        FileManager.default.createFile(atPath: stdout.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: stdout)
        p.standardError = FileHandle.nullDevice
        try p.run()
        return p
    }

    /// Runs to the end; returns the seconds it took and its standard output.
    @discardableResult
    func runToEnd(_ arguments: [String]) throws -> (seconds: Double, out: String) {
        let out = scratch.appendingPathComponent("out-\(UUID().uuidString)")
        let begin = Date()
        let p = try start(arguments, stdout: out)
        p.waitUntilExit()
        let text = try String(contentsOf: out, encoding: .utf8)
        XCTAssertEqual(p.terminationStatus, 0, "mae-eval \(arguments.joined(separator: " ")) failed")
        return (Date().timeIntervalSince(begin), text)
    }

    /// The loop position in a training checkpoint's `stateKey` metadata, nil when there is no checkpoint yet.
    func loopStep(_ checkpoint: URL, stateKey: String) -> Int? {
        guard let file = try? SafeTensors.read(contentsOf: checkpoint), let json = file.metadata[stateKey],
              let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any],
              let loop = object["loop"] as? [String: Any] else { return nil }
        return loop["step"] as? Int
    }

    /// Starts `arguments` (which include `--resume`) again and again, killing it with SIGKILL: first
    /// as soon as a mid-epoch checkpoint exists (so a mid-epoch resume always happens), then at up
    /// to three random moments within `seconds` (an unbroken run's duration); then lets it finish.
    /// Returns what happened, for failure messages.
    func killAndResume(_ arguments: [String], checkpoint: URL, stateKey: String, seconds: Double) throws -> String {
        var story: [String] = []
        let first = try start(arguments, stdout: scratch.appendingPathComponent("killed-mid"))
        while first.isRunning {
            if let step = loopStep(checkpoint, stateKey: stateKey), step > 0 {
                kill(first.processIdentifier, SIGKILL)
                story.append("killed at the mid-epoch checkpoint of step \(step)")
                break
            }
            Thread.sleep(forTimeInterval: 0.005)
        }
        first.waitUntilExit()
        XCTAssertEqual(first.terminationReason, .uncaughtSignal, "no mid-epoch checkpoint was seen")
        var generator = SystemRandomNumberGenerator()
        for round in 0..<3 {
            let delay = Double.random(in: 0.1...max(0.15, 0.6 * seconds), using: &generator)
            let p = try start(arguments, stdout: scratch.appendingPathComponent("killed-\(round)"))
            Thread.sleep(forTimeInterval: delay)
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            guard p.terminationReason == .uncaughtSignal else {
                XCTAssertEqual(p.terminationStatus, 0, "the resumed run failed")
                story.append("finished before the kill after \(String(format: "%.2f", delay)) s")
                return story.joined(separator: "; ")
            }
            let step = loopStep(checkpoint, stateKey: stateKey)
            story.append("killed after \(String(format: "%.2f", delay)) s (checkpoint at step \(step.map(String.init) ?? "none"))")
        }
        try runToEnd(arguments)
        return story.joined(separator: "; ")
    }

    /// log.jsonl without its wall-clock fields.
    func logWithoutClock(_ url: URL) throws -> [[String: Double]] {
        let text = try String(contentsOf: url, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return object.filter { !["seconds", "images_per_s"].contains($0.key) }.compactMapValues { ($0 as? NSNumber)?.doubleValue }
        }
    }

    func testPretrainingKilledAndResumedMatchesUnbrokenRun() throws {
        let counts = ShapesCounts(pretrain: 48, supervised: 0, train: 0, val: 0, scenesTrain: 0, scenesVal: 0)
        let data = try ShapesDataset.ensure(at: scratch.appendingPathComponent("shapes"), size: 16, seed: 3, counts: counts)
        let common = ["pretrain", "--method", "mae", "--data", data.pretrain.path, "--epochs", "3", "--batch-size", "8",
                      "--lr", "2e-3", "--seed", "5", "--threads", "1", "--workers", "1", "--checkpoint-every", "2",
                      "--architecture", "16/4/32/2/2", "--decoder-architecture", "16/1/2"]
        let a = scratch.appendingPathComponent("unbroken"), b = scratch.appendingPathComponent("killed")
        let seconds = try runToEnd(common + ["--out-dir", a.path]).seconds
        let story = try killAndResume(common + ["--out-dir", b.path, "--resume"],
                                      checkpoint: b.appendingPathComponent("checkpoint.safetensors"),
                                      stateKey: "train_state", seconds: seconds)
        for name in ["backbone.safetensors", "checkpoint.safetensors"] {
            XCTAssertEqual(try Data(contentsOf: a.appendingPathComponent(name)), try Data(contentsOf: b.appendingPathComponent(name)),
                           "\(name) differs after: \(story)")
        }
        let log = try logWithoutClock(a.appendingPathComponent("log.jsonl"))
        XCTAssertEqual(log.map { $0["epoch"] }, [1, 2, 3])
        XCTAssertEqual(log, try logWithoutClock(b.appendingPathComponent("log.jsonl")), story)
    }

    /// A 16 px Shapes classification set (10 val images) and a tiny random MAE-method backbone for it.
    func tinyTransferSetup(trainImages: Int) throws -> (data: ShapesPaths, weights: URL) {
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: trainImages, val: 10, scenesTrain: 0, scenesVal: 0)
        let data = try ShapesDataset.ensure(at: scratch.appendingPathComponent("shapes"), size: 16, seed: 3, counts: counts)
        let backbone = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 4, embedDim: 16, depth: 2, numHeads: 2))
        backbone.initializeWeights(seed: 1)
        let weights = scratch.appendingPathComponent("tiny.safetensors")
        try backbone.save(to: weights, metadata: ["method": "mae"])
        return (data, weights)
    }

    func testFineTuningKilledAndResumedMatchesUnbrokenRun() throws {
        let (data, weights) = try tinyTransferSetup(trainImages: 40)
        // Mixup, random erasing, RandAugment and drop path all draw: each must replay after a kill.
        func arguments(_ runs: URL) -> [String] {
            ["finetune", "--checkpoint", weights.path, "--task", "shapes-finetune", "--train-data", data.train.path,
             "--val-data", data.val.path, "--set", "dataset.img_size=16", "--set", "recipe.augmentation.mixup=0.8",
             "--set", "recipe.augmentation.mixup_prob=1.0", "--set", "recipe.augmentation.reprob=0.25",
             "--epochs", "3", "--batch-size", "8", "--seed", "2", "--threads", "1", "--checkpoint-every", "2",
             "--out-dir", runs.path, "--no-report"]
        }
        let a = scratch.appendingPathComponent("unbroken"), b = scratch.appendingPathComponent("killed")
        let (seconds, out) = try runToEnd(arguments(a))
        let runA = URL(fileURLWithPath: try XCTUnwrap(out.split(separator: "\n").last.map(String.init)))
        let runB = URL(fileURLWithPath: runA.path.replacingOccurrences(of: a.path, with: b.path))
        let story = try killAndResume(arguments(b) + ["--resume"],
                                      checkpoint: runB.appendingPathComponent("checkpoint.safetensors"),
                                      stateKey: "finetune_state", seconds: seconds)
        XCTAssertEqual(try Data(contentsOf: runA.appendingPathComponent("checkpoint.safetensors")),
                       try Data(contentsOf: runB.appendingPathComponent("checkpoint.safetensors")), story)
        let log = try logWithoutClock(runA.appendingPathComponent("log.jsonl"))
        XCTAssertEqual(log.map { $0["epoch"] }, [1, 2, 3])
        XCTAssertEqual(log, try logWithoutClock(runB.appendingPathComponent("log.jsonl")), story)
        let metrics = { (run: URL) throws -> [Double] in
            let m = try JSONDecoder().decode(TransferMetrics.self, from: Data(contentsOf: run.appendingPathComponent("metrics.json")))
            return [m.top1, m.top5]
        }
        XCTAssertEqual(try metrics(runA), try metrics(runB), story)
    }

    func testAugmentedProbeKilledAndResumedMatchesUnbrokenRun() throws {
        let (data, weights) = try tinyTransferSetup(trainImages: 48)
        func arguments(_ runs: URL) -> [String] {
            ["linprobe", "--mode", "augmented", "--checkpoint", weights.path, "--task", "shapes-linprobe",
             "--train-data", data.train.path, "--val-data", data.val.path, "--set", "dataset.img_size=16",
             "--set", "recipe.augmented.batch_size=8", "--set", "recipe.augmented.epochs=3",
             "--set", "recipe.augmented.warmup_epochs=1", "--seed", "4", "--threads", "1", "--checkpoint-every", "2",
             "--out-dir", runs.path, "--no-report"]
        }
        let a = scratch.appendingPathComponent("unbroken"), b = scratch.appendingPathComponent("killed")
        let (seconds, out) = try runToEnd(arguments(a))
        let runA = URL(fileURLWithPath: try XCTUnwrap(out.split(separator: "\n").last.map(String.init)))
        let runB = URL(fileURLWithPath: runA.path.replacingOccurrences(of: a.path, with: b.path))
        let story = try killAndResume(arguments(b) + ["--resume"], checkpoint: runB.appendingPathComponent("checkpoint.safetensors"),
                                      stateKey: "probe_state", seconds: seconds)
        XCTAssertEqual(try Data(contentsOf: runA.appendingPathComponent("checkpoint.safetensors")),
                       try Data(contentsOf: runB.appendingPathComponent("checkpoint.safetensors")), story)
        let log = try logWithoutClock(runA.appendingPathComponent("log.jsonl"))
        XCTAssertEqual(log.map { $0["epoch"] }, [1, 2, 3])
        XCTAssertEqual(log, try logWithoutClock(runB.appendingPathComponent("log.jsonl")), story)
    }
}
