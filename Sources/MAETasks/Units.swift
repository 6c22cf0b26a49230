import Foundation
import MAEFormats
import Yams

/// A task spec `mae-eval all` will run: its file, name, content hash and the seeds it runs.
public struct PlannedTask: Sendable, Equatable {
    /// The spec's `protocol:` (the unit kind that runs it).
    public var protocolName: String
    public var spec: URL
    public var name: String
    /// 16 hex digits over the resolved spec without its seeds (a change of recipe, data or head is a
    /// new unit; another seed list is not).
    public var hash: String
    public var seeds: [UInt64]
    /// Why the task cannot run here (its data is given by the user and is not there); `all` with no
    /// `--tasks` skips it with a note, a task named in `--tasks` runs and fails with the protocol's error.
    public var unavailable: String? = nil
}

/// One unit of `mae-eval all`: one backbone, one task spec, one seed, in one run folder.
public struct TransferUnit: Sendable, Equatable {
    /// Position in the plan (`--unit K`, the Slurm array index).
    public var index: Int
    public var task: PlannedTask
    public var backbone: Backbone
    /// `fileHash` of the backbone's file.
    public var backboneHash: String
    public var seed: UInt64

    public var stem: String { backbone.url.deletingPathExtension().lastPathComponent }
    /// The folder the protocol writes its run folder under: `<task>-<task hash 8>` in `units/`.
    public func protocolOutDir(_ outDir: URL) -> URL {
        outDir.appendingPathComponent("units").appendingPathComponent("\(task.name)-\(task.hash.prefix(8))")
    }
    /// The record `all` writes once the unit is done (`UnitRecord`).
    public func recordURL(_ outDir: URL) -> URL {
        protocolOutDir(outDir).appendingPathComponent("\(stem)-\(backboneHash.prefix(8))-s\(seed).unit.json")
    }
    /// "shapes-knn · mae_shapes · seed 0", for progress lines.
    public var described: String { "\(task.name) · \(stem) · seed \(seed)" }

    public static func == (a: TransferUnit, b: TransferUnit) -> Bool {
        a.index == b.index && a.task == b.task && a.backbone.url == b.backbone.url && a.backbone.role == b.backbone.role &&
            a.backboneHash == b.backboneHash && a.seed == b.seed
    }
}

/// What one unit left behind once done: `<stem>-<hash8>-s<seed>.unit.json` beside its run folder.
public struct UnitRecord: Codable, Sendable {
    /// The run folder, relative to `--out-dir`.
    public var runDir: String
    public var task: String
    public var taskHash: String
    public var evaluation: String
    public var checkpoint: String
    public var checkpointHash: String
    public var role: String
    public var seed: UInt64
    /// Wall time of the invocation that finished the unit (a resumed unit: its last part).
    public var seconds: Double

    enum CodingKeys: String, CodingKey {
        case runDir = "run_dir", task, taskHash = "task_hash", evaluation = "protocol", checkpoint
        case checkpointHash = "checkpoint_hash", role, seed, seconds
    }
}

/// What a unit kind needs from `all` besides the unit.
public struct UnitContext: Sendable {
    public var threads: Int?
    public var heads: Int?
    public var verbose: Bool
}

/// A protocol `mae-eval all` can run: it reads its task specs and runs one unit through the
/// protocol's own command (its run folders, its `--resume`), writing `metrics.json` and
/// `per_image.json` (see `PerImageResults`) into the run folder it returns.
///
/// Adding a protocol is one type conforming to this and one line in `TransferUnitKinds.all`; e.g.
/// detection: `protocolName` "detect", `plan` loading `Tasks/shapes-detect.yaml` with the detect
/// spec's loader, `run` calling the detect runner with one backbone, `[seed]`, `outDir` and resume,
/// the runner writing `per_image.json` of kind "detection" (and `perImageStatistic` its case).
public protocol TransferUnitKind: Sendable {
    /// The task specs' `protocol:` value.
    var protocolName: String { get }
    /// Reads the spec; `seeds` (`--seeds`) replace the spec's.
    func plan(spec: URL, seeds: [UInt64]?) throws -> PlannedTask
    /// Runs (or resumes) one unit with its run folder under `outDir`; returns the run folder.
    func run(_ unit: TransferUnit, outDir: URL, context: UnitContext) throws -> URL
}

/// The unit kinds `all` knows, in the order its plan runs them.
public enum TransferUnitKinds {
    public static let all: [any TransferUnitKind] = [
        ClassificationUnitKind(protocolName: "linprobe"),
        ClassificationUnitKind(protocolName: "knn"),
        ClassificationUnitKind(protocolName: "finetune"),
        DetectUnitKind(),
        SegmentUnitKind(),
    ]

    /// The kind for a `protocol:` value, nil when none runs it.
    public static func kind(_ name: String) -> (any TransferUnitKind)? { all.first { $0.protocolName == name } }
}

/// The `protocol:` of a task spec file, read before the protocol's own loader checks the rest; a
/// segmentation spec (which has no `protocol:` field) is "segment" when `SegmentSpec` reads it.
/// - Throws: `TaskSpecError` naming the file when it is not YAML or has no `protocol:`.
public func specProtocol(_ url: URL) throws -> String {
    guard let text = try? String(contentsOf: url, encoding: .utf8) else {
        throw TaskSpecError(path: url.path, problem: "cannot be read")
    }
    guard case .mapping(let fields)? = try composeBounded(text, source: url.path), let name = fields["protocol"]?.string else {
        if (try? SegmentSpec.load(url.path)) != nil { return SegmentUnitKind().protocolName }
        throw TaskSpecError(path: url.path, problem: "has no `protocol:` field (linprobe, knn, finetune, ...)")
    }
    return name
}

/// Linear probes (cached, low-shot), kNN and fine-tuning: one `TaskSpec`, run through
/// `runLinearProbe`, `runKNN`, `runFineTune` with one backbone and one seed.
struct ClassificationUnitKind: TransferUnitKind {
    var protocolName: String

    func plan(spec url: URL, seeds: [UInt64]?) throws -> PlannedTask {
        var spec = try TaskSpec.load(contentsOf: url)
        guard spec.evaluation.rawValue == protocolName else {
            throw TaskSpecError(path: url.path, problem: "is a \(spec.evaluation.rawValue) task, not a \(protocolName) task")
        }
        let runSeeds = seeds ?? spec.seeds
        spec.seeds = []
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var identity = try encoder.encode(spec)
        identity.append(Data(spec.dataset.rootURL.standardizedFileURL.path.utf8))
        // kNN trains nothing: a seed changes nothing, so it runs once, as `mae-eval knn` does.
        return PlannedTask(protocolName: protocolName, spec: url, name: spec.name, hash: fnv1a(identity),
                           seeds: spec.evaluation == .knn ? [runSeeds[0]] : runSeeds)
    }

    func run(_ unit: TransferUnit, outDir: URL, context: UnitContext) throws -> URL {
        var common = TransferOptions()
        if unit.backbone.role == "baseline" { common.baseline = unit.backbone.url } else { common.checkpoints = [unit.backbone.url] }
        common.task = unit.task.spec.path
        common.seeds = [unit.seed]
        common.outDir = outDir
        common.report = nil
        common.heads = context.heads
        common.threads = context.threads
        common.verbose = context.verbose
        let runs: [TransferRun]
        switch protocolName {
        case "linprobe":
            var o = LinearProbeOptions()
            o.common = common
            runs = try runLinearProbe(o)
        case "knn":
            var o = KNNOptions()
            o.common = common
            runs = try runKNN(o)
        default:
            var o = FineTuneOptions()
            o.common = common
            // A unit stopped mid-run continues its checkpoint: `<task>/<variant>/<stem>-<hash8>-s<seed>/`.
            let folder = outDir.appendingPathComponent(unit.task.name)
            let run = "\(unit.stem)-\(unit.backboneHash.prefix(8))-s\(unit.seed)"
            o.resume = ((try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []).contains { variant in
                FileManager.default.fileExists(atPath: folder.appendingPathComponent(variant).appendingPathComponent(run)
                    .appendingPathComponent("checkpoint.safetensors").path)
            }
            runs = try runFineTune(o)
        }
        return try onlyRunFolder(runs, of: unit)
    }
}

/// The one run folder a unit's protocol call made (a unit is one backbone and one seed).
func onlyRunFolder(_ runs: [TransferRun], of unit: TransferUnit) throws -> URL {
    guard runs.count == 1 else {
        throw TaskError.badArgument("internal check failed: unit \(unit.index) made \(runs.count) run folders instead of one")
    }
    return runs[0].dir
}

/// The identity of a dense spec file for its unit hash: its text with the `seeds:` line left out
/// (another seed list is the same task; any other change of recipe, data or head is a new one).
func denseSpecHash(_ url: URL, extra: String) throws -> String {
    guard let text = try? String(contentsOf: url, encoding: .utf8) else { throw TaskSpecError(path: url.path, problem: "cannot be read") }
    let lines = text.split(separator: "\n", omittingEmptySubsequences: false).filter { !$0.hasPrefix("seeds:") }
    return fnv1a(Data((lines.joined(separator: "\n") + "\u{1}" + extra).utf8))
}

/// Mask R-CNN detection (`Tasks/*-detect.yaml`): one `runDetect` per unit with one backbone and
/// A dense task's plan: hashed by its spec text and data root (`denseSpecHash`); unavailable, with
/// a note, when its data is the user's (not generated) and `val` is not there.
func planDenseTask(_ protocolName: String, spec url: URL, name: String, seeds: [UInt64], root: URL, generated: Bool,
                   val: (url: URL, what: String)) throws -> PlannedTask {
    let missing = generated || FileManager.default.fileExists(atPath: val.url.path) ? nil
        : "its \(val.what) \(val.url.path) are not there (point dataset.root at them)"
    return PlannedTask(protocolName: protocolName, spec: url, name: name, hash: try denseSpecHash(url, extra: root.standardizedFileURL.path),
                       seeds: seeds, unavailable: missing)
}

/// The options `detect` and `segment` share, which a unit of `all` sets the same way.
protocol DenseUnitOptions {
    var checkpoints: [URL] { get set }
    var baseline: URL? { get set }
    var task: String? { get set }
    var seeds: [UInt64]? { get set }
    var resume: Bool { get set }
    var outDir: URL { get set }
    var report: URL? { get set }
    var heads: Int? { get set }
    var threads: Int? { get set }
    var verbose: Bool { get set }
}

extension DetectOptions: DenseUnitOptions {}
extension SegmentOptions: DenseUnitOptions {}

extension DenseUnitOptions {
    /// One backbone (in its role) and one seed of the unit's spec, `--resume` on, no report.
    mutating func setUnit(_ unit: TransferUnit, outDir: URL, context: UnitContext) {
        if unit.backbone.role == "baseline" { baseline = unit.backbone.url } else { checkpoints = [unit.backbone.url] }
        task = unit.task.spec.path
        seeds = [unit.seed]
        resume = true
        self.outDir = outDir
        report = nil
        heads = context.heads
        threads = context.threads
        verbose = context.verbose
    }
}

/// one seed, `--resume` on (a stopped unit continues its run folder's checkpoint), no report.
struct DetectUnitKind: TransferUnitKind {
    var protocolName: String { "detect" }

    func plan(spec url: URL, seeds: [UInt64]?) throws -> PlannedTask {
        let spec = try DetectSpec.load(contentsOf: url)
        return try planDenseTask(protocolName, spec: url, name: spec.name, seeds: seeds ?? spec.seeds, root: spec.dataset.rootURL,
                                 generated: spec.dataset.generate == "shapes",
                                 val: (spec.dataset.resolve(spec.dataset.valAnnotations), "val annotations"))
    }

    func run(_ unit: TransferUnit, outDir: URL, context: UnitContext) throws -> URL {
        var o = DetectOptions()
        o.setUnit(unit, outDir: outDir, context: context)
        return try onlyRunFolder(try runDetect(o), of: unit)
    }
}

/// UperNet and linear semantic segmentation (`Tasks/*-segment*.yaml`, `ade20k-upernet.yaml`): one
/// `runSegment` per unit with one backbone and one seed, the spec's head, `--resume` on, no report.
struct SegmentUnitKind: TransferUnitKind {
    var protocolName: String { "segment" }

    func plan(spec url: URL, seeds: [UInt64]?) throws -> PlannedTask {
        let spec = try SegmentSpec.load(url.path)
        return try planDenseTask(protocolName, spec: url, name: spec.name, seeds: seeds ?? spec.seeds, root: spec.rootURL,
                                 generated: spec.dataset.generate == "shapes", val: (spec.resolve(spec.dataset.valImages), "val images"))
    }

    func run(_ unit: TransferUnit, outDir: URL, context: UnitContext) throws -> URL {
        var o = SegmentOptions()
        o.setUnit(unit, outDir: outDir, context: context)
        return try onlyRunFolder(try runSegment(o), of: unit)
    }
}
