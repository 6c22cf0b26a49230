import ArgumentParser
import Foundation
import MAETasks

/// Flags `linprobe`, `knn` and `finetune` share.
struct TransferFlags: ParsableArguments {
    @Option(name: .long, help: "Backbone checkpoint to evaluate (repeatable). Default: the installation's Checkpoints/mae_shapes.safetensors (see mae-eval --help).")
    var checkpoint: [URL] = []
    @Option(name: .long, help: "Backbone the others are compared against. Default (with no --checkpoint): the installation's Checkpoints/supervised_shapes.safetensors.")
    var baseline: URL?
    @Option(name: .long, help: "Train ImageFolder (one sub-folder per class), instead of the task's.")
    var trainData: URL?
    @Option(name: .long, help: "Val ImageFolder, instead of the task's.")
    var valData: URL?
    @Option(name: .long, help: "Task spec: a YAML file or the name of one in the installation's Tasks/.")
    var task: String?
    @Option(name: .customLong("set"), help: ArgumentHelp("Override a task-spec field by its dotted YAML path, e.g. --set recipe.base_lr=0.002 --set dataset.img_size=64 (repeatable; the value is a YAML scalar or [list]).", valueName: "key=value"))
    var overrides: [String] = []
    @Option(name: .long, help: "Epochs, instead of the task's.")
    var epochs: Int?
    @Option(name: .long, help: "One seed, instead of the task's.")
    var seed: UInt64?
    @Option(name: .long, help: "Comma-separated seeds (e.g. 0,1,2), instead of the task's.")
    var seeds: String?
    @Option(name: .long, help: "Folder of the run folders (relative to the current folder).")
    var outDir = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    @Option(name: .long, help: "Markdown report refreshed after the runs. Default: ./Reports/classification.md for the default --out-dir (from the repository root, the committed report), OUT_DIR/classification.md for another (so an experiment elsewhere never rewrites the committed report).")
    var report: URL?
    @Flag(name: .long, help: "Do not refresh the report.")
    var noReport = false
    @Option(name: .long, help: "Attention heads, for checkpoints that do not say and match no preset.")
    var heads: Int?

    /// The shared options of a transfer run, with `compute`'s input size and threads.
    func options(_ compute: ModelRunFlags) throws -> TransferOptions {
        var o = TransferOptions()
        o.checkpoints = checkpoint
        o.baseline = baseline
        o.trainData = trainData
        o.valData = valData
        o.task = task
        o.overrides = overrides
        o.epochs = epochs
        if let seeds { o.seeds = try TransferOptions.parseSeeds(seeds) }
        if let seed {
            guard seeds == nil else { throw ValidationError("pass --seed or --seeds, not both.") }
            o.seeds = [seed]
        }
        o.outDir = outDir
        o.report = noReport ? nil : report ?? URL(fileURLWithPath: TransferOptions.defaultReportPath(runs: outDir.relativePath))
        o.heads = heads
        o.imgSize = compute.imgSize
        o.threads = compute.threads
        o.precision = compute.precision
        return o
    }
}
