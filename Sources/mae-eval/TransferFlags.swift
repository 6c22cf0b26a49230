import ArgumentParser
import Foundation
import MAEFormats
import MAEModels
import MAETasks

/// Flags `linprobe`, `knn` and `finetune` share.
struct TransferFlags: ParsableArguments {
    @Option(name: .long, help: "Backbone checkpoint to evaluate (repeatable). Default: the installation's Checkpoints/mae_shapes.safetensors (see mae-eval --help).")
    var checkpoint: [String] = []
    @Option(name: .long, help: "Backbone the others are compared against. Default (with no --checkpoint): the installation's Checkpoints/supervised_shapes.safetensors.")
    var baseline: String?
    @Option(name: .long, help: "Train ImageFolder (one sub-folder per class), instead of the task's.")
    var trainData: String?
    @Option(name: .long, help: "Val ImageFolder, instead of the task's.")
    var valData: String?
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
    var outDir = TransferOptions.defaultRunsPath
    @Option(name: .long, help: "Markdown report refreshed after the runs. Default: ./Reports/classification.md for the default --out-dir (from the repository root, the committed report), OUT_DIR/classification.md for another (so an experiment elsewhere never rewrites the committed report).")
    var report: String?
    @Flag(name: .long, help: "Do not refresh the report.")
    var noReport = false
    @Option(name: .long, help: "Attention heads, for checkpoints that do not say and match no preset.")
    var heads: Int?

    func options() throws -> TransferOptions {
        var o = TransferOptions()
        o.checkpoints = checkpoint.map { URL(fileURLWithPath: $0) }
        o.baseline = baseline.map { URL(fileURLWithPath: $0) }
        o.trainData = trainData.map { URL(fileURLWithPath: $0) }
        o.valData = valData.map { URL(fileURLWithPath: $0) }
        o.task = task
        o.overrides = overrides
        o.epochs = epochs
        if let seeds {
            do { o.seeds = try TransferOptions.parseSeeds(seeds) } catch { throw ValidationError("\(error)") }
        }
        if let seed {
            guard seeds == nil else { throw ValidationError("pass --seed or --seeds, not both.") }
            o.seeds = [seed]
        }
        o.outDir = URL(fileURLWithPath: outDir)
        o.report = noReport ? nil : URL(fileURLWithPath: report ?? TransferOptions.defaultReportPath(runs: outDir))
        o.heads = heads
        return o
    }
}

/// `--pool cls|avg` as a library value.
func parsePooling(_ s: String?) throws -> Pooling? {
    guard let s else { return nil }
    guard let p = Pooling(rawValue: s) else { throw ValidationError("--pool must be cls or avg, not '\(s)'.") }
    return p
}

