import Foundation
import MAECOCO
import MAEData
import MAEFormats
import MAEModels
@testable import MAETasks
import TestSupport
import XCTest

/// Detection and segmentation over MPI: the built `mae-eval` under `mpirun -np 2` trains to the
/// one-process weights (float rounding) and its sharded evaluation writes the one-process files.
extension DistributedTests {
    /// Every f32 tensor of a safetensors file but the optimizer's, by name.
    func weights(_ url: URL) throws -> [String: [Float]] {
        try SafeTensors.read(contentsOf: url).tensors.filter { $0.value.dtype == .f32 && !$0.key.hasPrefix("optim.") }
            .mapValues(\.floats)
    }

    /// The numbers of a metrics.json, without its timings, creation time and paths.
    func metricNumbers(_ url: URL) throws -> NSDictionary {
        var object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        for key in ["timings", "created", "checkpoint"] { object[key] = nil }
        return object as NSDictionary
    }

    /// Each file under `dir` (recursively) by relative path, with its bytes.
    func files(under dir: URL, except skipped: Set<String>) throws -> [String: Data] {
        let paths = try XCTUnwrap(FileManager.default.subpathsOfDirectory(atPath: dir.path))
        var out: [String: Data] = [:]
        for path in paths where !skipped.contains(path) {
            var isFolder: ObjCBool = false
            FileManager.default.fileExists(atPath: dir.appendingPathComponent(path).path, isDirectory: &isFolder)
            if !isFolder.boolValue { out[path] = try Data(contentsOf: dir.appendingPathComponent(path)) }
        }
        return out
    }

    /// 8 train and 3 val 32 px scenes, a 4-block width-16 backbone and the shipped `task` shrunk to
    /// them (batch 4, narrow heads); returns the scratch folder and a function training one run folder
    /// (`epochs` of 2 steps) under `out` on one process or `ranks`, which returns the run folder.
    func tinySegmentation(_ task: String, epochs: Int = 2) throws -> (URL, (String, Int?) throws -> URL) {
        _ = try mpirun()
        let root = try scratchFolder(prefix: "mae-eval-segment-mpi")
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 0, val: 0, scenesTrain: 8, scenesVal: 3)
        try ShapesDataset.generate(to: root.appendingPathComponent("shapes"), size: 16, counts: counts, sceneSize: 32)
        let spec = root.appendingPathComponent("tiny.yaml")
        // UperNet on mmseg's default pyramid, whose x4 level holds the zero-gradient biases listed below.
        let text = try TinyTasks.segmentation(task)
        try (task == "shapes-segment" ? TinyTasks.setting(text, ["  rescales": "[4, 2, 1, 0.5]"]) : text)
            .write(to: spec, atomically: true, encoding: .utf8)
        let backbone = root.appendingPathComponent("tiny_mae.safetensors")
        try TinyTasks.backbone(at: backbone)
        return (root, { out, ranks in
            let printed = try self.run(["segment", "--checkpoint", backbone.path, "--task", spec.path, "--epochs", String(epochs), "--threads", "1",
                                        "--out-dir", root.appendingPathComponent(out).path, "--no-report"], ranks: ranks, in: root)
            let lines = printed.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "rank 0 alone prints the run folder: \(printed)")
            return URL(fileURLWithPath: String(try XCTUnwrap(lines.last)))
        })
    }

    /// The linear head (frozen backbone, SyncBN over the 4 blocks' features, 1x1 conv) for 2 epochs
    /// x 2 steps of batch 4: two ranks end at the one-process head and BN statistics.
    func testTwoRankLinearSegmentationMatchesOneProcess() throws {
        let (_, train) = try tinySegmentation("shapes-segment-linear")
        let one = try train("one", nil), two = try train("two", 2)
        let a = try weights(one.appendingPathComponent("segmenter.safetensors"))
        let (maxDiff, compared) = maxWeightDifference(a, try weights(two.appendingPathComponent("segmenter.safetensors")))
        print("2 ranks vs 1 process after 4 linear-head steps: max weight difference \(maxDiff) over \(compared) values")
        XCTAssertTrue(a.keys.contains("decode_head.bn.running_var"))
        XCTAssertLessThan(maxDiff, 1e-5)
        XCTAssertEqual(try metricNumbers(one.appendingPathComponent("metrics.json")),
                       try metricNumbers(two.appendingPathComponent("metrics.json")))
    }

    /// UperNet (SyncBN in the neck and heads, drop path, Dropout2d) for 2 epochs x 2 steps of batch
    /// 4 on 8 tiny scenes: two ranks of 2 images end at the one-process weights and BN running
    /// statistics to float rounding with the same losses and metrics; then --eval-only of those
    /// weights on 2 ranks writes the one-process pred/, overlays/ and per_image.json byte for byte.
    func testTwoRankSegmentationMatchesOneProcess() throws {
        let (root, train) = try tinySegmentation("shapes-segment")
        let one = try train("one", nil), two = try train("two", 2)
        let a = try weights(one.appendingPathComponent("segmenter.safetensors"))
        let b = try weights(two.appendingPathComponent("segmenter.safetensors"))
        XCTAssertTrue(a.keys.contains("decode_head.psp_modules.0.1.bn.running_var"))
        // Feature2Pyramid's transposed-conv biases feed only conv + BatchNorm, which removes a
        // per-channel constant: their true gradient is zero, so (as the qkv key bias, see
        // `maxWeightDifference`) AdamW turns rounding noise into lr-sized steps there, and the
        // running means of the BatchNorms they feed follow. Those are bounded by the steps taken.
        let shifted: Set<String> = ["neck.upsample_4x.0.bias", "neck.upsample_4x.3.bias", "neck.upsample_2x.0.bias",
                                    "neck.upsample_4x.1.running_mean", "decode_head.lateral_convs.0.bn.running_mean",
                                    "decode_head.lateral_convs.1.bn.running_mean"]
        XCTAssertTrue(shifted.isSubset(of: a.keys))
        let (maxDiff, compared) = maxWeightDifference(a.filter { !shifted.contains($0.key) }, b.filter { !shifted.contains($0.key) })
        let (shiftDiff, _) = maxWeightDifference(a.filter { shifted.contains($0.key) }, b.filter { shifted.contains($0.key) })
        let statistics = a.keys.filter { $0.contains("running_") && !shifted.contains($0) }
            .flatMap { name in zip(a[name]!, b[name]!).map { abs($0 - $1) } }.max() ?? .nan
        print("2 ranks vs 1 process after 4 UperNet steps: max weight difference \(maxDiff) over \(compared) values " +
              "(BN running statistics \(statistics)); zero-gradient biases and the running means they shift \(shiftDiff)")
        XCTAssertGreaterThan(compared, 10_000)
        XCTAssertLessThan(maxDiff, 1e-5, "2-rank segmenter differs from the 1-process one by more than float rounding")
        XCTAssertLessThan(shiftDiff, 4 * 0.002, "zero-gradient biases moved more than 4 steps of the learning rate")
        XCTAssertEqual(try metricNumbers(one.appendingPathComponent("metrics.json")),
                       try metricNumbers(two.appendingPathComponent("metrics.json")))
        let logs = try [one, two].map { try readJSONLines(SegmentEpoch.self, from: $0.appendingPathComponent("log.jsonl")) }
        XCTAssertEqual(logs[0].count, 2)
        for (x, y) in zip(logs[0], logs[1]) {
            XCTAssertEqual(x.trainLoss, y.trainLoss, accuracy: 1e-5)
            XCTAssertEqual(x.auxLoss ?? .nan, y.auxLoss ?? .nan, accuracy: 1e-5)
        }
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: two.path).sorted(),
                       try FileManager.default.subpathsOfDirectory(atPath: one.path).sorted())

        func evaluate(_ out: String, ranks: Int?) throws -> URL {
            let printed = try run(["segment", "--eval-only", "--weights", one.appendingPathComponent("segmenter.safetensors").path,
                                   "--val-images", ShapesPaths.sceneImages(root.appendingPathComponent("shapes/scenes_val")).path,
                                   "--val-labels", ShapesPaths.sceneClassMaps(root.appendingPathComponent("shapes/scenes_val")).path,
                                   "--num-classes", "11", "--img-size", "32", "--threads", "1",
                                   "--out-dir", root.appendingPathComponent(out).path], ranks: ranks, in: root)
            return URL(fileURLWithPath: String(try XCTUnwrap(printed.split(separator: "\n").last)))
        }
        let evalOne = try evaluate("eval-one", ranks: nil), evalTwo = try evaluate("eval-two", ranks: 2)
        let written = try files(under: evalOne, except: ["metrics.json", ".mae-eval.lock"])
        XCTAssertGreaterThanOrEqual(written.keys.filter { $0.hasPrefix("pred/") }.count, 3)
        XCTAssertEqual(try files(under: evalTwo, except: ["metrics.json", ".mae-eval.lock"]), written)
        XCTAssertEqual(try metricNumbers(evalOne.appendingPathComponent("metrics.json")),
                       try metricNumbers(evalTwo.appendingPathComponent("metrics.json")))
    }

    /// 8 train and 6 val 32 px scenes, a 2-block width-16 backbone and the shipped Shapes detection
    /// task shrunk to them (batch 4, narrow heads, 16 RoIs per image); returns the scratch folder, the
    /// task file and a function training one run folder (`epochs` of 2 steps) under `out` on one
    /// process or `ranks`, which returns the run folder.
    func tinyDetection(epochs: Int = 2) throws -> (URL, URL, (String, Int?) throws -> URL) {
        _ = try mpirun()
        let root = try scratchFolder(prefix: "mae-eval-detect-mpi")
        try ShapesDataset.generate(to: root, size: 16, seed: 3,
                                   counts: ShapesCounts(pretrain: 0, supervised: 0, train: 0, val: 0, scenesTrain: 8, scenesVal: 6),
                                   sceneSize: 32)
        let task = root.appendingPathComponent("tiny-detect.yaml")
        try Data(TinyTasks.detection(root: root, batch: 4, epochs: epochs).utf8).write(to: task)
        let checkpoint = root.appendingPathComponent("tiny.safetensors")
        try TinyTasks.backbone(at: checkpoint, imgSize: 16, depth: 2, seed: 1)
        return (root, task, { out, ranks in
            let printed = try self.run(["detect", "--checkpoint", checkpoint.path, "--task", task.path, "--threads", "1",
                                        "--out-dir", root.appendingPathComponent(out).path], ranks: ranks, in: root)
            let lines = printed.split(separator: "\n")
            XCTAssertEqual(lines.count, 1, "rank 0 alone prints the run folder: \(printed)")
            return URL(fileURLWithPath: String(try XCTUnwrap(lines.last)))
        })
    }

    /// Mask R-CNN (drop path, anchor and RoI sampling, RoI-count loss normalisers) for 2 epochs x 2
    /// steps of batch 4 on 8 tiny scenes: two ranks of 2 images end at the one-process weights to
    /// float rounding with the same losses and COCO numbers; then --eval-only of those weights on 2
    /// ranks (a batch of 4 val images each) writes the one-process detections.json, per_image.json
    /// and figures byte for byte.
    func testTwoRankDetectionMatchesOneProcess() throws {
        let (root, task, train) = try tinyDetection()
        let one = try train("one", nil), two = try train("two", 2)
        let (maxDiff, compared) = maxWeightDifference(try weights(one.appendingPathComponent("detector.safetensors")),
                                                      try weights(two.appendingPathComponent("detector.safetensors")))
        print("2 ranks vs 1 process after 4 Mask R-CNN steps: max weight difference \(maxDiff) over \(compared) values")
        XCTAssertGreaterThan(compared, 10_000)
        XCTAssertLessThan(maxDiff, 1e-5, "2-rank detector differs from the 1-process one by more than float rounding")
        let metrics = try [one, two].map { try metricNumbers($0.appendingPathComponent("metrics.json")) }
        XCTAssertEqual(metrics[0]["bbox"] as? NSDictionary, metrics[1]["bbox"] as? NSDictionary)
        XCTAssertEqual(metrics[0]["segm"] as? NSDictionary, metrics[1]["segm"] as? NSDictionary)
        let logs = try [one, two].map { try readJSONLines(DetectEpoch.self, from: $0.appendingPathComponent("log.jsonl")) }
        XCTAssertEqual(logs[0].count, 2)
        for (x, y) in zip(logs[0], logs[1]) {
            XCTAssertEqual(Set(x.terms.keys), Set(y.terms.keys))
            for (name, value) in x.terms { XCTAssertEqual(value, y.terms[name]!, accuracy: 1e-5, name) }
        }

        func evaluate(_ out: String, ranks: Int?) throws -> URL {
            let printed = try run(["detect", "--eval-only", "--weights", one.appendingPathComponent("detector.safetensors").path,
                                   "--task", task.path, "--heads", "2", "--threads", "1",
                                   "--out-dir", root.appendingPathComponent(out).path], ranks: ranks, in: root)
            return URL(fileURLWithPath: String(try XCTUnwrap(printed.split(separator: "\n").last)))
        }
        let evalOne = try evaluate("eval-one", ranks: nil), evalTwo = try evaluate("eval-two", ranks: 2)
        let written = try files(under: evalOne, except: ["metrics.json", ".mae-eval.lock"])
        let detections = try COCODetection.load(contentsOf: evalOne.appendingPathComponent("detections.json"))
        XCTAssertGreaterThan(Set(detections.map(\.imageId)).count, 4, "detections on both ranks' images")
        XCTAssertNotNil(written["per_image.json"])
        XCTAssertFalse(written.keys.filter { $0.hasPrefix("figures/") }.isEmpty)
        XCTAssertEqual(try files(under: evalTwo, except: ["metrics.json", ".mae-eval.lock"]), written)
        XCTAssertEqual(try metricNumbers(evalOne.appendingPathComponent("metrics.json")),
                       try metricNumbers(evalTwo.appendingPathComponent("metrics.json")))
    }
}
