import Foundation
import MAEFormats

/// `mae-eval all`: every protocol of the task specs for every backbone and seed, one unit each.
public struct AllOptions: Sendable {
    /// Backbones (`--checkpoint`, repeatable) and the one they are compared with (`--baseline`);
    /// none: the shipped MAE and supervised pair.
    public var checkpoints: [URL] = []
    public var baseline: URL?
    /// Task spec names (in `Tasks/`) or paths (`--tasks a,b`); nil: every spec in `Tasks/` whose
    /// protocol a unit kind runs.
    public var tasks: [String]?
    /// Seeds replacing each spec's (`--seeds`).
    public var seeds: [UInt64]?
    /// Units go to `outDir/units/`; the report beside them unless `report` says otherwise.
    public var outDir = URL(fileURLWithPath: AllOptions.defaultOutPath)
    /// The markdown report; `transfer.json` goes beside it.
    public var report = URL(fileURLWithPath: AllOptions.defaultReportPath(outDir: AllOptions.defaultOutPath))
    /// `--unit K`: run unit K of the plan only (no report).
    public var unit: Int?
    /// `--report-only`: write the report of the done units; refused while one is not done.
    public var reportOnly = false
    /// `--emit-slurm FILE`: write the sbatch script instead of running.
    public var emitSlurm: URL?
    public var slurm = SlurmOptions()
    public var bootstrap = BootstrapSettings()
    public var threads: Int?
    public var heads: Int?
    public var verbose = true

    public init() {}

    /// The out dir when none is given: beside `runs/`, not in it, so `mae-eval report` and the
    /// classification commands (which read every run under `runs/`) never count the units twice.
    public static let defaultOutPath = "runs-all"

    /// `Reports/transfer.md` for the default out dir (the committed report, from the repository root),
    /// `OUT_DIR/transfer.md` for another.
    public static func defaultReportPath(outDir: String) -> String {
        outDir == defaultOutPath ? "Reports/transfer.md" : (outDir as NSString).appendingPathComponent("transfer.md")
    }

    /// `transfer.json`, beside the report.
    public var reportJSON: URL { report.deletingPathExtension().appendingPathExtension("json") }
}

/// The units of `all` in order: tasks (by unit kind, then name in numeric order), then backbones (checkpoints,
/// then the baseline), then seeds. The same options always give the same plan, so `--unit K`
/// names the same unit in every process.
/// - Throws: `TaskError` for a missing checkpoint, a task no unit kind runs, or a bad spec.
public func planUnits(_ o: AllOptions) throws -> [TransferUnit] {
    var common = TransferOptions()
    common.checkpoints = o.checkpoints
    common.baseline = o.baseline
    let backbones = try common.backbones()
    let hashes = try backbones.map { try fileHash($0.url) }
    let specs: [URL]
    if let tasks = o.tasks {
        guard !tasks.isEmpty else { throw TaskError.badArgument("--tasks must name at least one task") }
        specs = try tasks.map { name in
            let path = URL(fileURLWithPath: name)
            if FileManager.default.fileExists(atPath: path.path) { return path.standardizedFileURL }
            let named = TaskSpec.folder.appendingPathComponent(name + ".yaml")
            guard FileManager.default.fileExists(atPath: named.path) else {
                throw TaskError.badArgument("--tasks: '\(name)' is neither a task spec file nor the name of one in \(TaskSpec.folder.path)/")
            }
            return named
        }
    } else {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: TaskSpec.folder.path)) ?? []
        specs = names.filter { $0.hasSuffix(".yaml") }.sorted().map { TaskSpec.folder.appendingPathComponent($0) }
    }
    var planned: [PlannedTask] = []
    for spec in specs {
        let name = try specProtocol(spec)
        guard let kind = TransferUnitKinds.kind(name) else {
            if o.tasks != nil {
                throw TaskError.badArgument("\(spec.path): protocol '\(name)' is not one `all` runs (it runs " +
                                            TransferUnitKinds.all.map(\.protocolName).joined(separator: ", ") + ")")
            }
            say("note: skipping \(displayPath(spec.path)): no unit kind runs protocol '\(name)' yet", o.verbose)
            continue
        }
        let task = try kind.plan(spec: spec, seeds: o.seeds)
        if let why = task.unavailable, o.tasks == nil {
            say("note: skipping \(displayPath(spec.path)): \(why)", o.verbose)
            continue
        }
        planned.append(task)
    }
    // Names key the report's sections: two specs of one name would merge into one.
    if let repeated = firstRepeat(planned.map(\.name)) {
        let files = planned.filter { $0.name == repeated }.map { displayPath($0.spec.path) }
        throw TaskError.badArgument("the task name \(repeated) is given by more than one spec (\(files.joined(separator: ", "))); each task runs once")
    }
    let order = Dictionary(uniqueKeysWithValues: TransferUnitKinds.all.enumerated().map { ($1.protocolName, $0) })
    // Names in numeric order, so the low-shot probes run (and report) 1-shot, 5-shot, 10-shot.
    planned.sort { a, b in
        a.protocolName != b.protocolName ? order[a.protocolName]! < order[b.protocolName]!
            : a.name.compare(b.name, options: .numeric) == .orderedAscending
    }
    var units: [TransferUnit] = []
    for task in planned {
        for (backbone, hash) in zip(backbones, hashes) {
            for seed in task.seeds {
                units.append(TransferUnit(index: units.count, task: task, backbone: backbone, backboneHash: hash, seed: seed))
            }
        }
    }
    guard !units.isEmpty else { throw TaskError.badArgument("no task spec to run in \(TaskSpec.folder.path)/") }
    return units
}

/// The record of a done unit, nil while it is not done (no record, or its run folder lacks
/// `metrics.json` or `per_image.json`).
public func doneRecord(_ unit: TransferUnit, outDir: URL) -> UnitRecord? {
    guard let data = try? Data(contentsOf: unit.recordURL(outDir)),
          let record = try? JSONDecoder().decode(UnitRecord.self, from: data) else { return nil }
    let dir = outDir.appendingPathComponent(record.runDir)
    let files = ["metrics.json", PerImageResults.fileName].map { dir.appendingPathComponent($0).path }
    return files.allSatisfy { FileManager.default.fileExists(atPath: $0) } ? record : nil
}

/// Runs one unit (a done one is left alone) and records it; returns its record.
func runUnit(_ unit: TransferUnit, _ o: AllOptions) throws -> UnitRecord {
    if let done = doneRecord(unit, outDir: o.outDir) { return done }
    guard let kind = TransferUnitKinds.kind(unit.task.protocolName) else {
        throw TaskError.badArgument("internal check failed: no unit kind for protocol \(unit.task.protocolName)")
    }
    let start = Date()
    let dir = try kind.run(unit, outDir: unit.protocolOutDir(o.outDir),
                           context: UnitContext(threads: o.threads, heads: o.heads, verbose: o.verbose))
    let root = o.outDir.standardizedFileURL.path + "/"
    let path = dir.standardizedFileURL.path
    guard path.hasPrefix(root) else {
        throw TaskError.badArgument("internal check failed: unit \(unit.index) wrote \(path) outside \(root)")
    }
    let record = UnitRecord(runDir: String(path.dropFirst(root.count)), task: unit.task.name, taskHash: unit.task.hash,
                            evaluation: unit.task.protocolName, checkpoint: unit.backbone.url.path,
                            checkpointHash: unit.backboneHash, role: unit.backbone.role, seed: unit.seed,
                            seconds: elapsed(since: start))
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
    try writeAtomically(try encoder.encode(record), to: unit.recordURL(o.outDir))
    return record
}

/// `mae-eval all`: plans the units, then (by the options) emits the Slurm script, runs one unit,
/// writes the report of the done units, or runs every unit not done yet and writes the report.
/// Progress on standard error names each unit, how many are left and the time left (from the
/// wall times of the units done so far).
/// Returns the lines the command prints: the script, the unit's run folder, or the report and `transfer.json`.
public func runAll(_ o: AllOptions) throws -> [String] {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    let units = try planUnits(o)
    if let script = o.emitSlurm {
        try writeSlurmScript(units: units, options: o, to: script)
        return [script.path]
    }
    try prepareOutputFolder(o.outDir, flag: "--out-dir")
    if let k = o.unit {
        guard units.indices.contains(k) else {
            throw TaskError.badArgument("--unit \(k) is outside the plan's units 0...\(units.count - 1)")
        }
        let record = try runUnit(units[k], o)
        return [o.outDir.appendingPathComponent(record.runDir).path]
    }
    try prepareReportOutput(o.report, flag: "--report")
    if o.reportOnly {
        let missing = units.filter { doneRecord($0, outDir: o.outDir) == nil }
        if let first = missing.first {
            throw TaskError.badArgument("\(missing.count) of the \(units.count) units are not done (the first: unit \(first.index), " +
                                        "\(first.described)); run `mae-eval all --unit K` for them, or `mae-eval all`")
        }
    } else {
        // Wall times of done units by task (earlier invocations' records too) estimate the time left.
        var spent: [String: [Double]] = [:]
        var todo: [TransferUnit] = []
        for unit in units {
            if let done = doneRecord(unit, outDir: o.outDir) { spent[unit.task.name, default: []].append(done.seconds) } else { todo.append(unit) }
        }
        if todo.count < units.count { say("all: \(units.count - todo.count) of \(units.count) units already done, skipped", o.verbose) }
        for (i, unit) in todo.enumerated() {
            // A task's units take about as long as its done ones; a task not timed yet has no estimate.
            let estimates = todo[i...].map { u in spent[u.task.name].map { $0.reduce(0, +) / Double($0.count) } }
            let untimed = estimates.filter { $0 == nil }.count
            let timed = ProgressLine.duration(estimates.compactMap { $0 }.reduce(0, +))
            let eta = untimed == estimates.count ? "time left unknown (no unit of these tasks timed yet)"
                : "about \(timed) left" + (untimed > 0 ? " plus \(untimed) unit\(untimed == 1 ? "" : "s") of tasks not timed yet" : "")
            say("all: unit \(unit.index + 1)/\(units.count) (\(unit.described), \(unit.task.protocolName)): " +
                "\(todo.count - i) of \(units.count) to run, \(eta)", o.verbose)
            let record = try runUnit(unit, o)
            spent[unit.task.name, default: []].append(record.seconds)
        }
    }
    try writeTransferReport(units: units, options: o)
    return [o.report.relativePath, o.reportJSON.relativePath]
}
