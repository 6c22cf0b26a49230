import Foundation
import MAEDistributed
import MAEData
import MAEFormats
import MAEJSON
import MAEKernels
import MAEModels

/// What `linprobe`, `knn` and `finetune` share: which backbones, which data, which task, where runs go.
public struct TransferOptions: Sendable {
    /// Backbones to evaluate (`--checkpoint`, repeatable); empty with no baseline: the shipped pair
    /// (`defaultMAECheckpoint` against `defaultSupervisedCheckpoint`).
    public var checkpoints: [URL] = []
    /// The backbone the others are compared against (`--baseline`).
    public var baseline: URL?
    /// ImageFolder splits overriding the task's (`--train-data`, `--val-data`).
    public var trainData: URL?
    public var valData: URL?
    /// Task spec path or name in `Tasks/`; nil: the protocol's Shapes task.
    public var task: String?
    /// `dotted.path=value` overrides of task-spec fields (`--set`), applied before the spec is checked.
    public var overrides: [String] = []
    public var epochs: Int?
    /// Seeds overriding the task's.
    public var seeds: [UInt64]?
    /// Runs go to `outDir/<task>/<variant>/<backbone>-s<seed>/`.
    public var outDir = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    /// The markdown report `runAndReport` refreshes after the runs; nil: none.
    public var report: URL? = URL(fileURLWithPath: TransferOptions.defaultReportPath(runs: TransferOptions.defaultRunsPath))
    /// Attention heads for checkpoints that do not say (`--heads`).
    public var heads: Int?
    /// Progress lines on standard error.
    public var verbose = true
    /// Model input size (`--img-size`) instead of the task's `dataset.img_size`; a generated Shapes
    /// dataset keeps the task's size (the eval transform resizes it).
    public var imgSize: Int?
    /// Compute threads for the run (`--threads`); nil: every core.
    public var threads: Int?
    /// The backbones' arithmetic (`--precision`, `LoadOptions.precision`). bf16 runs are their own
    /// variant (", bf16"): their own run folders, report rows and cached features.
    public var precision = Precision.fp32

    public init() {}

    /// The protocol's variant name for this run's precision (`Precision.variant`).
    public func variant(_ name: String) -> String { precision.variant(name) }

    /// The folder of run folders when none is given.
    public static let defaultRunsPath = "runs"

    /// Where the report of the runs under `runs` goes by default: the committed
    /// `Reports/classification.md` for the default runs folder, `runs/classification.md` for another,
    /// so an experiment elsewhere never rewrites the committed report.
    public static func defaultReportPath(runs: String) -> String {
        runs == defaultRunsPath ? "Reports/classification.md" : (runs as NSString).appendingPathComponent("classification.md")
    }
}

extension Precision {
    /// The protocol's variant name for runs in this precision: unchanged in fp32, ", bf16" appended in
    /// bf16, so a bf16 run is its own run folder and its own report section (every protocol, dense too).
    public func variant(_ name: String) -> String { self == .fp32 ? name : name + ", bf16" }

    /// What a dense run (`segment`, `detect`) computes in this precision, for its metrics.json's
    /// protocol checks; none in fp32.
    public var denseChecks: [String] {
        self == .fp32 ? []
            : ["bf16: the ViT backbone's linear layers multiply bf16-rounded inputs and weights with fp32 accumulation (torch.autocast's rule; " + BF16Info.current.summary + "), and so do attention's products where our kernel runs; unlike autocast, the neck's and heads' convolutions and linear layers stay fp32, as do norms, softmax, the fused attention of long sequences, losses and master weights"]
    }
}

/// One backbone to evaluate and its part in the comparison.
public struct Backbone: Sendable {
    public var url: URL
    /// `checkpoint` or `baseline`.
    public var role: String
}

extension TransferOptions {
    /// The backbones in order: checkpoints, then the baseline.
    public func backbones() throws -> [Backbone] {
        var list = checkpoints.map { Backbone(url: $0, role: "checkpoint") }
        if let baseline { list.append(Backbone(url: baseline, role: "baseline")) }
        if list.isEmpty {
            list = [Backbone(url: defaultMAECheckpoint, role: "checkpoint"),
                    Backbone(url: defaultSupervisedCheckpoint, role: "baseline")]
        }
        for b in list where !FileManager.default.fileExists(atPath: b.url.path) {
            let shipped = b.url == defaultMAECheckpoint || b.url == defaultSupervisedCheckpoint
            throw TaskError.badArgument("\(b.url.path): no such checkpoint" + (shipped
                ? " (\(Installation.current.described); set MAE_EVAL_HOME to the folder holding Checkpoints/, or pass --checkpoint)" : ""))
        }
        return list
    }

    /// `--seeds 0,1,2`: non-negative integers, none empty, none repeated (each seed is one run folder).
    public static func parseSeeds(_ text: String) throws -> [UInt64] {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        let parsed = items.compactMap { UInt64($0) }
        guard parsed.count == items.count else {
            throw TaskError.badArgument("--seeds must be comma-separated non-negative integers, not '\(text)'" +
                                        (items.contains("") ? " (an item is empty)" : ""))
        }
        if let repeated = firstRepeat(parsed) {
            throw TaskError.badArgument("--seeds lists \(repeated) twice; each seed is one run folder")
        }
        return parsed
    }

    /// Creates `--out-dir` and the report's folder and checks that both can be written, before any
    /// work (a read-only or full disk, or a file where a folder should be, is one sentence now, not
    /// after the training).
    public func prepareOutputs() throws {
        try prepareOutputFolder(outDir, flag: "--out-dir")
        if let report { try prepareReportOutput(report, flag: "--report") }
    }

    /// The task spec: `--task`, else the protocol's Shapes task, with `--set`, `--epochs` and `--seeds`
    /// applied and checked again.
    public func taskSpec(default name: String) throws -> TaskSpec {
        var spec = try TaskSpec.load(task ?? name, overrides: overrides)
        var flags: [String] = []
        if let epochs {
            guard epochs > 0 else { throw TaskError.badArgument("--epochs must be positive") }
            guard spec.evaluation != .knn else { throw TaskError.badArgument("--epochs does not apply to knn, which trains nothing") }
            for note in spec.setEpochs(epochs) { say("note: " + note, verbose) }
            flags.append("--epochs \(epochs)")
        }
        if let seeds {
            guard !seeds.isEmpty else { throw TaskError.badArgument("--seeds must list at least one seed") }
            spec.seeds = seeds
            flags.append("--seeds " + seeds.map(String.init).joined(separator: ","))
        }
        if let imgSize {
            guard imgSize > 0 else { throw TaskError.badArgument("--img-size must be positive") }
            spec.dataset.imgSize = imgSize
            flags.append("--img-size \(imgSize)")
        }
        try spec.revalidate(flags: flags)
        return spec
    }

    /// Train and val ImageFolders: the flags', else the task's (Shapes is generated when missing).
    /// - Throws: `TaskError` naming the folder when a split has fewer than two classes (top-1 would
    ///   be 100% by construction). Train and val being one folder gets a warning on standard error.
    public func datasets(_ spec: TaskSpec) throws -> (train: ImageFolder, val: ImageFolder, name: String) {
        let data: (train: ImageFolder, val: ImageFolder, name: String)
        switch (trainData, valData) {
        case let (t?, v?):
            data = (try ImageFolder(root: t), try ImageFolder(root: v), t.deletingLastPathComponent().lastPathComponent)
        case (nil, nil):
            if spec.dataset.generate == "shapes" {
                // At the task file's own size: --img-size changes the model's input, not the data.
                let size = imgSize == nil ? spec.dataset.imgSize : try TaskSpec.load(task ?? spec.name).dataset.imgSize
                try rankZeroFirst { try ShapesDataset.ensure(at: spec.dataset.rootURL, size: size) }
            }
            data = (try ImageFolder(root: spec.dataset.trainURL), try ImageFolder(root: spec.dataset.valURL), spec.dataset.name)
        default:
            throw TaskError.badArgument("pass --train-data and --val-data together")
        }
        for folder in [data.train, data.val] where folder.classes.count < 2 {
            throw TaskError.badArgument("\(folder.root.path) has only one class folder ('\(folder.classes[0])'): classification " +
                                        "needs at least two classes (with one, top-1 is 100% by construction)")
        }
        if data.train.root.standardizedFileURL.resolvingSymlinksInPath() == data.val.root.standardizedFileURL.resolvingSymlinksInPath() {
            warn("train and val are the same folder \(data.train.root.path): the val accuracy measures fitting the training images, not transfer")
        }
        return data
    }
}

/// A backbone loaded for transfer, with what the reports say about it.
public struct LoadedBackbone {
    public var loaded: LoadedModel
    public var url: URL
    public var role: String
    /// mae | supervised | unknown: the checkpoint's metadata, else its key layout.
    public var method: String
    /// FNV-1a of the file's bytes (cache keys and run-folder names).
    public var hash: String
    public var model: VisionTransformer { loaded.model }
    /// The file name without extension.
    public var stem: String { url.deletingPathExtension().lastPathComponent }
}

/// Loads a backbone (no head, no decoder) at `imgSize` (nil: the checkpoint's own size).
public func loadBackbone(_ b: Backbone, imgSize: Int?, heads: Int?, precision: Precision = .fp32) throws -> LoadedBackbone {
    var options = LoadOptions(heads: heads, imgSize: imgSize)
    options.precision = precision
    let loaded = try loadModel(from: b.url, options: options)
    var method = loaded.metadata["method"] ?? "unknown"
    if loaded.metadata["method"] == nil {
        switch loaded.info.layout {
        case .maePretrainWithDecoder: method = "mae"
        case .clsTokenClassifier, .deitDistilled, .globalPoolFinetuned: method = "supervised"
        default: method = "unknown"
        }
    }
    return LoadedBackbone(loaded: loaded, url: b.url, role: b.role, method: method, hash: try fileHash(b.url))
}

/// 64-bit FNV-1a of a file, as 16 hex digits: a content key for caches, not a security hash.
public func fileHash(_ url: URL) throws -> String {
    guard let data = try? Data(contentsOf: url, options: .alwaysMapped) else {
        throw TaskError.badArgument("\(url.path) cannot be read")
    }
    return fnv1a(data)
}

func fnv1a(_ data: Data) -> String {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    data.withUnsafeBytes { raw in
        for byte in raw.bindMemory(to: UInt8.self) { h = (h ^ UInt64(byte)) &* 0x100_0000_01b3 }
    }
    return String(format: "%016llx", h)
}

/// `metrics.json` of one classification-transfer run.
public struct TransferMetrics: Codable, Sendable {
    public var task: String
    public var evaluation: String
    /// The protocol's variant ("cached, cls", "full", "last 1 blocks", "k 20") that keys report sections.
    public var variant: String
    public var checkpoint: String
    public var checkpointHash: String
    public var method: String
    public var role: String
    /// Accuracies in percent.
    public var top1: Double
    public var top5: Double
    public var seed: UInt64
    public var recipe: String
    public var dataset: String
    public var trainData: String
    public var valData: String
    public var trainImages: Int
    public var valImages: Int
    public var classes: Int
    /// The feature the head read, as used ("cls", "avg (fc_norm)", "cls of last 4 blocks").
    public var pooling: String
    /// Hyperparameters picked on the held-out part of train (cached linear probe).
    public var selected: [String: Double]?
    /// Every grid point: lr, wd, held-out top-1 and loss.
    public var grid: [[String: Double]]?
    /// Statements of how the protocol was followed, for the report.
    public var protocolChecks: [String]
    /// Seconds: extract, train, eval, total.
    public var timings: [String: Double]
    public var epochs: Int
    public var created: String
    /// The mae-eval that made the run and the BLAS it ran on (absent in runs of older versions).
    public var maeEvalVersion: String? = MAEEvalVersion.described
    public var blas: BLASInfo? = .current

    enum CodingKeys: String, CodingKey {
        case task, evaluation = "protocol", variant, checkpoint, checkpointHash = "checkpoint_hash", method, role
        case top1, top5, seed, recipe, dataset, trainData = "train_data", valData = "val_data"
        case trainImages = "train_images", valImages = "val_images", classes, pooling, selected, grid
        case protocolChecks = "protocol_checks", timings, epochs, created
        case maeEvalVersion = "mae_eval_version", blas
    }
}

/// One line of a transfer run's `log.jsonl`.
public struct TransferEpoch: EpochLine, Sendable, Equatable {
    public var epoch: Int
    public var trainLoss: Double
    public var lr: Double
    /// Val top-1 (percent) after the epoch, when measured.
    public var valTop1: Double?
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case epoch, trainLoss = "train_loss", lr, valTop1 = "val_top1", seconds
    }
}

extension TransferEpoch {
    /// The log line of a finished epoch of a trained transfer head (fine-tuning, the augmented probe),
    /// also said on the progress line: "`label` epoch e/E: loss L, val top-1 A%, S s".
    static func recorded(_ summary: EpochSummary, lr: Double, label: String, epochs: Int,
                         progress: ProgressLine) -> TransferEpoch {
        let entry = TransferEpoch(epoch: summary.epoch, trainLoss: summary.terms["loss"] ?? .nan, lr: lr,
                                  valTop1: summary.evaluation["val_top1"], seconds: summary.seconds)
        progress.note("\(label) epoch \(summary.epoch)/\(epochs): loss \(String(format: "%.4f", entry.trainLoss)), " +
                      "val top-1 \(String(format: "%.2f", entry.valTop1 ?? .nan))%, \(String(format: "%.1f", entry.seconds)) s")
        return entry
    }
}

/// A run's folder and files.
public struct TransferRun: Sendable {
    public var dir: URL
    public var metrics: URL { dir.appendingPathComponent("metrics.json") }
    public var log: URL { dir.appendingPathComponent("log.jsonl") }
    /// Fine-tuning: weights, optimizer state and epoch, rewritten at each epoch end.
    public var checkpoint: URL { dir.appendingPathComponent("checkpoint.safetensors") }

    /// `root/<task>/<variant>/<stem>-<hash8>-s<seed>`.
    public init(root: URL, task: String, variant: String, backbone: LoadedBackbone, seed: UInt64) {
        dir = root.appendingPathComponent(task).appendingPathComponent(Self.folderName(variant: variant))
            .appendingPathComponent("\(backbone.stem)-\(backbone.hash.prefix(8))-s\(seed)")
    }

    /// A variant's folder name: lower case, each run of other characters than letters and digits one
    /// "-" ("upernet, bf16" -> "upernet-bf16").
    public static func folderName(variant: String) -> String {
        let slug = variant.lowercased().map { $0.isLetter || $0.isNumber ? $0 : "-" }
        return String(slug).split(separator: "-").joined(separator: "-")
    }

    public init(dir: URL) { self.dir = dir }

    public func create() throws {
        try prepareOutputFolder(dir, flag: "the run folder")
    }

    /// Creates the folder and writes `log.jsonl` and `metrics.json`, both checked before either is
    /// written, so a failed check leaves no folder and no half-updated run. Under MPI every rank
    /// checks and rank 0 alone writes (so for each `write` and `lock` below).
    /// - Throws: `TaskError` naming the field and the run when a number is NaN or infinite.
    public func write(_ metrics: TransferMetrics, log entries: [TransferEpoch]) throws {
        try check(log: entries)
        try check(metrics)
        guard Distributed.world.isMain else { return }
        try create()
        try write(log: entries)
        try write(metrics)
    }

    /// Creates the folder and takes its lock for the whole run (see `RunFolderLock`); hold the result
    /// until the run's last file is written. nil on ranks other than 0, which write nothing.
    public func lock() throws -> RunFolderLock? { Distributed.world.isMain ? try RunFolderLock(dir) : nil }

    /// Writes `metrics.json`.
    /// - Throws: `TaskError` naming the field and the run when a number is NaN or infinite: a
    ///   non-finite number is never written as a result.
    public func write(_ metrics: TransferMetrics) throws {
        try check(metrics)
        guard Distributed.world.isMain else { return }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(metrics), to: self.metrics)
    }

    /// Writes `log.jsonl`, one epoch a line.
    /// - Throws: `TaskError` naming the field, the epoch and the run when a number is NaN or infinite.
    public func write(log entries: [TransferEpoch]) throws {
        try check(log: entries)
        guard Distributed.world.isMain else { return }
        try writeJSONLines(entries, to: log)
    }

    private func check(_ metrics: TransferMetrics) throws {
        var numbers: [(String, Double)] = [("top-1", metrics.top1), ("top-5", metrics.top5)]
        numbers += (metrics.selected ?? [:]).sorted { $0.key < $1.key }.map { ("selected \($0.key)", $0.value) }
        for (i, point) in (metrics.grid ?? []).enumerated() {
            numbers += point.sorted { $0.key < $1.key }.map { ("grid point \(i + 1) \($0.key)", $0.value) }
        }
        numbers += metrics.timings.sorted { $0.key < $1.key }.map { ("timing \($0.key)", $0.value) }
        if let (field, value) = numbers.first(where: { !$0.1.isFinite }) {
            throw TaskError.badArgument("\(field) is \(nonFiniteName(value)) in the metrics of \(displayPath(dir.path)): " +
                                        "a non-finite number is not a result, so nothing was recorded")
        }
    }

    private func check(log entries: [TransferEpoch]) throws {
        for e in entries {
            let numbers = [("train loss", e.trainLoss), ("lr", e.lr), ("val top-1", e.valTop1 ?? 0), ("seconds", e.seconds)]
            if let (field, value) = numbers.first(where: { !$0.1.isFinite }) {
                throw TaskError.badArgument("\(field) is \(nonFiniteName(value)) at epoch \(e.epoch) of \(displayPath(dir.path)): " +
                                            (field == "train loss" ? "the head diverged" : "a non-finite number cannot be logged"))
            }
        }
    }

    /// Reads `log.jsonl` (empty when there is none).
    public func readLog() throws -> [TransferEpoch] { try readJSONLines(TransferEpoch.self, from: log) }
}

/// "NaN", "+Inf" or "-Inf", for messages about a non-finite number.
func nonFiniteName(_ v: Double) -> String { v.isNaN ? "NaN" : v > 0 ? "+Inf" : "-Inf" }

/// An exclusive lock on a run folder while a run writes into it: an `flock` on `.mae-eval.lock` in the
/// folder, held as long as this value lives. The kernel drops it when the process ends (kill -9 too),
/// so a killed run can be resumed at once. Taking it removes the stale `writeAtomically` temporaries a
/// killed run left there (no other writer can be active in a folder whose lock we hold).
public final class RunFolderLock {
    /// The lock file's name; it holds the owner's pid, for the message a second run gets.
    public static let fileName = ".mae-eval.lock"
    /// The locked run folder.
    public let dir: URL
    private let fd: Int32

    /// Creates `dir` if needed and locks it, or throws one sentence naming the run that holds it;
    /// `flag` names the folder in errors about the folder itself.
    public init(_ dir: URL, flag: String = "the run folder") throws {
        try prepareOutputFolder(dir, flag: flag)
        let path = dir.appendingPathComponent(Self.fileName).path
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else {
            throw TaskError.badArgument("\(dir.path) cannot be locked for this run (\(posixCause(errno)))")
        }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let cause = errno
            let owner = (try? String(contentsOfFile: path, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
            close(fd)
            guard cause == EWOULDBLOCK else {
                throw TaskError.badArgument("\(dir.path) cannot be locked for this run (\(posixCause(cause)))")
            }
            let pid = owner.flatMap { Int($0) }.map { " (pid \($0))" } ?? ""
            throw TaskError.badArgument("\(dir.path) is in use by another mae-eval run\(pid); wait for it or choose another --out-dir")
        }
        let text = "\(getpid())\n"
        ftruncate(fd, 0)
        _ = text.withCString { pwrite(fd, $0, strlen($0), 0) }
        self.dir = dir
        self.fd = fd
        removeStaleTemporaries(in: dir)
    }

    deinit { close(fd) }
}

/// ISO 8601 time stamp for metrics.
func timestamp() -> String { ISO8601DateFormatter().string(from: Date()) }

/// Seconds since `start`.
func elapsed(since start: Date) -> Double { Date().timeIntervalSince(start) }

/// A `warning: ...` line on standard error, whatever the verbosity: the run goes on, but its
/// numbers need the caveat.
func warn(_ message: String) {
    FileHandle.standardError.write(Data(("warning: " + message + "\n").utf8))
}

/// A message on standard error.
func say(_ message: String, _ verbose: Bool) {
    if verbose && Distributed.world.isMain { FileHandle.standardError.write(Data((message + "\n").utf8)) }
}
