import Foundation
import MAEData
import MAEModels
import MAETasks
import TestSupport
import XCTest

/// The shipped task specs shrunk for the end-to-end tests (32 px scenes, narrow heads, small
/// batches), so a recipe change in `Tasks/` needs no edit here, and a spec field the tests set
/// that disappears fails loudly.
enum TinyTasks {
    /// `text` with each line that starts with `key:` (key written with its indentation: "name" is the
    /// top-level field, "  crop" a section's) set to `key: value`, its comment dropped; every key must
    /// be on some line.
    static func setting(_ text: String, _ fields: KeyValuePairs<String, String>) throws -> String {
        var lines = text.components(separatedBy: "\n")
        for (key, value) in fields {
            let matches = lines.indices.filter { lines[$0].hasPrefix(key + ":") }
            guard !matches.isEmpty else { throw TestSetupError("the spec has no '\(key):' line for the test to set") }
            for i in matches { lines[i] = key + ": " + value }
        }
        return lines.joined(separator: "\n")
    }

    /// Tasks/`task`.yaml (shapes-segment or shapes-segment-linear) named `tiny-segment`, reading the
    /// scenes under the folder `shapes` beside it, 32 px crops, heads 8 / 4 wide, batch `batch`.
    static func segmentation(_ task: String = "shapes-segment", batch: Int = 4, epochs: Int? = nil) throws -> String {
        let shipped = try String(contentsOf: repositoryRoot.appendingPathComponent("Tasks/\(task).yaml"), encoding: .utf8)
        var text = try setting(shipped, ["name": "tiny-segment", "  root": "shapes", "  scale": "[128, 32]", "  crop": "32",
                                         "  batch_size": String(batch)])
        if task == "shapes-segment" { text = try setting(text, ["  channels": "8", "  aux_channels": "4"]) }
        if let epochs { text = try setting(text, ["  epochs": String(epochs)]) }
        return text
    }

    /// Tasks/shapes-detect.yaml on the scenes under `root`: 32 px, narrow heads, 16 RoIs per image,
    /// batch `batch`, `epochs` epochs with the learning-rate step at the end.
    static func detection(root: URL, batch: Int, epochs: Int) throws -> String {
        let shipped = try String(contentsOf: repositoryRoot.appendingPathComponent("Tasks/shapes-detect.yaml"), encoding: .utf8)
        return try setting(shipped, [
            "  root": root.path, "  generate": "none", "  img_size": "32", "  pyramid_channels": "8", "  conv_dim": "8",
            "  fc_dim": "16", "  box_convs": "1", "  mask_convs": "1", "  roi_batch_size": "16", "  batch_size": String(batch),
            "  epochs": String(epochs), "  warmup_iters": "1", "  milestones": "[\(epochs)]",
        ])
    }

    /// A small MAE-style backbone saved at `url` (the shipped ones are too slow for debug-build tests).
    static func backbone(at url: URL, imgSize: Int = 32, depth: Int = 4, seed: UInt64 = 0) throws {
        let vit = try VisionTransformer(config: ViTConfig(imgSize: imgSize, patchSize: 4, embedDim: 16, depth: depth, numHeads: 2))
        vit.initializeWeights(seed: seed)
        try vit.save(to: url, metadata: ["method": "mae"])
    }
}

/// A scratch `mae-eval segment` on tiny Shapes scenes: the scenes under `root/shapes` (32 px), the
/// task text at `root/tiny.yaml`, a tiny MAE-style backbone, and `options` that train it into `root/runs`.
struct TinySegmentation {
    let root: URL
    var options = SegmentOptions()

    init(root: URL, task: String, scenes: (train: Int, val: Int), depth: Int = 4) throws {
        self.root = root
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 0, val: 0, scenesTrain: scenes.train, scenesVal: scenes.val)
        try ShapesDataset.generate(to: root.appendingPathComponent("shapes"), size: 16, counts: counts, sceneSize: 32)
        let taskFile = root.appendingPathComponent("tiny.yaml")
        try task.write(to: taskFile, atomically: true, encoding: .utf8)
        let backbone = root.appendingPathComponent("tiny_mae.safetensors")
        try TinyTasks.backbone(at: backbone, depth: depth)
        options.checkpoints = [backbone]
        options.task = taskFile.path
        options.outDir = root.appendingPathComponent("runs")
        options.verbose = false
    }

    /// `--eval-only --weights W` on the val scenes at 32 px, into `root/eval`.
    func evaluating(_ weights: URL) -> SegmentOptions {
        let val = root.appendingPathComponent("shapes/scenes_val")
        var e = SegmentOptions()
        e.evalOnly = true
        e.weights = weights
        e.valImages = ShapesPaths.sceneImages(val)
        e.valLabels = ShapesPaths.sceneClassMaps(val)
        e.numClasses = 11
        e.imgSize = 32
        e.outDir = root.appendingPathComponent("eval")
        e.verbose = false
        return e
    }
}

struct TestSetupError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
