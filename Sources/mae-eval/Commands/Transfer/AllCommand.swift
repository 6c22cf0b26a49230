import ArgumentParser
import Foundation
import MAETasks

struct All: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Every transfer protocol for every backbone and seed, then one report with bootstrap intervals.",
        discussion: """
            With no arguments: the shipped MAE and supervised Shapes checkpoints on every task spec in the \
            installation's Tasks/ whose protocol `all` runs (linear probes cls and avg, low-shot probes, kNN, \
            full and partial fine-tuning, Mask R-CNN detection, UperNet and linear segmentation; a spec whose \
            user-given data is not there, such as coco-detect or ade20k-upernet, is skipped unless --tasks names it), then ./Reports/transfer.md and ./Reports/transfer.json.

            Each (backbone content hash, task spec hash, seed) is one unit with its own run folder under \
            OUT_DIR/units/<task>-<spec hash>/; a done unit (its <backbone>-<hash>-s<seed>.unit.json record, \
            metrics.json and per_image.json) is skipped, a stopped one resumes (fine-tuning from its checkpoint, \
            the probes from the feature cache, detection and segmentation from their run's checkpoint), so killing the command at any moment and rerunning it ends with \
            the same numbers. Progress names the unit, how many are left and the time left.

            The report has a summary table (each backbone, the MAE − supervised delta with a 95% paired-bootstrap \
            interval over the validation images, n.s. where it covers 0, the MAE paper's figure) and a section \
            per task; transfer.json holds one row per unit with its metrics.

            --unit K runs unit K of the plan only; --report-only writes the report once every unit is done; \
            --emit-slurm FILE writes an sbatch job-array script with one element per unit (each `all --unit K` \
            with the arguments that rebuild this plan) which, run as `bash FILE`, submits itself and a \
            dependent report job.
            """)

    @Option(name: .long, help: "Backbone checkpoint to evaluate (repeatable). Default: the installation's Checkpoints/mae_shapes.safetensors.")
    var checkpoint: [URL] = []
    @Option(name: .long, help: "Backbone the others are compared against. Default (with no --checkpoint): Checkpoints/supervised_shapes.safetensors.")
    var baseline: URL?
    @Option(name: .long, help: "Comma-separated task specs (names in Tasks/ or YAML paths). Default: every spec in Tasks/ whose protocol `all` runs.")
    var tasks: String?
    @Option(name: .long, help: "Comma-separated seeds (e.g. 0,1,2), instead of each task's.")
    var seeds: String?
    @Option(name: .long, help: "Folder of the units' run folders (relative to the current folder).")
    var outDir = URL(fileURLWithPath: AllOptions.defaultOutPath)
    @Option(name: .long, help: "Markdown report (transfer.json beside it). Default: ./Reports/transfer.md for the default --out-dir, OUT_DIR/transfer.md for another.")
    var report: URL?
    @Option(name: .long, help: "Run unit K of the plan only (0-based; the Slurm array index).")
    var unit: Int?
    @Flag(name: .long, help: "Write the report of the done units only (refused while a unit is not done).")
    var reportOnly = false
    @Option(name: .long, help: "Write an sbatch job-array script (one element per unit) to FILE instead of running.")
    var emitSlurm: URL?
    @Option(name: .long, help: "--emit-slurm: Slurm partition.")
    var partition: String?
    @Option(name: .long, help: "--emit-slurm: time limit of each element (e.g. 2:00:00).")
    var time: String?
    @Option(name: .long, help: "--emit-slurm: CPUs per task (each unit's --threads).")
    var cpusPerTask: Int?
    @Option(name: .long, help: "--emit-slurm: processes per unit; above 1 each unit runs under srun.")
    var ranksPerUnit = 1
    @Option(name: .long, help: "Bootstrap resamples of the validation images.")
    var bootstrapResamples = 10_000
    @Option(name: .long, help: "Bootstrap resamples for detection (each a COCO eval of every run).")
    var bootstrapDetectionResamples = 200
    @Option(name: .long, help: "Seed of the bootstrap resamples.")
    var bootstrapSeed: UInt64 = 0
    @Option(name: .long, help: "Attention heads, for checkpoints that do not say and match no preset.")
    var heads: Int?
    @Option(name: .long, help: ArgumentHelp("Compute threads (default: every core; at most 4 per core).", valueName: "N"))
    var threads: Int?

    var options: AllOptions {
        get throws {
            var o = AllOptions()
            o.checkpoints = checkpoint
            o.baseline = baseline
            o.tasks = tasks.map { $0.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) } }
            if let seeds { o.seeds = try TransferOptions.parseSeeds(seeds) }
            o.outDir = outDir
            o.report = report ?? URL(fileURLWithPath: AllOptions.defaultReportPath(outDir: outDir.relativePath))
            o.unit = unit
            o.reportOnly = reportOnly
            o.emitSlurm = emitSlurm
            o.slurm.partition = partition
            o.slurm.time = time
            o.slurm.cpusPerTask = cpusPerTask
            o.slurm.ranksPerUnit = ranksPerUnit
            guard bootstrapResamples >= 100 else { throw ValidationError("--bootstrap-resamples must be at least 100, not \(bootstrapResamples).") }
            o.bootstrap.resamples = bootstrapResamples
            guard bootstrapDetectionResamples >= 20 else {
                throw ValidationError("--bootstrap-detection-resamples must be at least 20, not \(bootstrapDetectionResamples).")
            }
            o.bootstrap.detectionResamples = bootstrapDetectionResamples
            o.bootstrap.seed = bootstrapSeed
            o.heads = heads
            o.threads = threads
            if unit != nil && reportOnly { throw ValidationError("pass --unit or --report-only, not both.") }
            if emitSlurm != nil && (unit != nil || reportOnly) { throw ValidationError("--emit-slurm writes the script only: drop --unit and --report-only.") }
            return o
        }
    }

    func call() throws -> [String] { try runAll(try options) }
}
