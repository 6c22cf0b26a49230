import Foundation
import MAEDistributed
import MAEData
import MAEFormats
import Yams

/// `config.yaml` of a run folder: the fully resolved configuration of what ran (the task spec after
/// every override, the recipe with its defaults filled in, the flags that shaped the run), as timm's
/// `args.yaml`. Keys are sorted, so identical runs write identical files.
public struct RunConfig<Resolved: Encodable>: Encodable {
    /// The command: pretrain, linprobe, knn or finetune.
    public var command: String
    /// The task spec's file with its `--set` overrides (transfer runs).
    public var taskSource: String?
    /// The task spec after `--set`, `--epochs`, `--seeds` and `--batch-size`.
    public var task: TaskSpec?
    /// The recipe that ran, every default filled in.
    public var resolved: Resolved
    /// This run's seed, backbone, data and other per-run facts.
    public var run: [String: String]
    /// Changes the tool made to what was asked (a shortened warmup, a resumed or extended run).
    public var notes: [String]

    enum CodingKeys: String, CodingKey {
        case command, taskSource = "task_source", task, resolved, run, notes
    }

    public init(command: String, taskSource: String? = nil, task: TaskSpec? = nil, resolved: Resolved,
                run: [String: String], notes: [String] = []) {
        self.command = command; self.taskSource = taskSource; self.task = task; self.resolved = resolved
        self.run = run; self.notes = notes
    }

    /// The YAML text, keys sorted, numbers as Swift prints them (`0.002`, not Yams' `2e-3`).
    public func yaml() throws -> String {
        let encoder = YAMLEncoder()
        encoder.options.sortKeys = true
        guard let tree = try Yams.compose(yaml: try encoder.encode(self)) else { return "" }
        func plainNumbers(_ node: Node) -> Node {
            switch node {
            case .scalar(let s):
                // Yams writes floats as plain scalars like 2e-3; quoted strings stay as they are.
                guard s.style == .plain, Int(s.string) == nil, let value = Double(s.string) else { return node }
                // A Float field (head.temperature 0.07) reads as its Float, not as the widened Double.
                let narrow = Float(value)
                return Node(Double(narrow) == value ? "\(narrow)" : "\(value)")
            case .sequence(let seq): return .sequence(Node.Sequence(seq.map(plainNumbers), seq.tag, seq.style))
            case .mapping(let map):
                return .mapping(Node.Mapping(map.map { ($0.key, plainNumbers($0.value)) }, map.tag, map.style))
            }
        }
        return try Yams.serialize(node: plainNumbers(tree), sortKeys: true)
    }

    /// Writes `config.yaml` into `dir` through the project's atomic writer.
    public func write(into dir: URL) throws {
        try writeAtomically(Data(try yaml().utf8), to: dir.appendingPathComponent(runConfigFileName))
    }
}

/// The resolved-config file every run folder holds beside `metrics.json`.
public let runConfigFileName = "config.yaml"

/// The first field (in sorted key order) whose value differs between two encodings of one recipe
/// type, with both values as JSON text; nil when they agree. Resume checks name the field with it.
func firstDifference<T: Encodable>(_ new: T, _ old: T) -> (field: String, new: String, old: String)? {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    func fields(_ value: T) -> [String: Any] {
        guard let data = try? encoder.encode(value),
              let object = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { return [:] }
        return object
    }
    func text(_ value: Any?) -> String {
        guard let value, !(value is NSNull),
              let data = try? JSONSerialization.data(withJSONObject: value, options: [.fragmentsAllowed, .sortedKeys]) else {
            return "none"
        }
        return String(decoding: data, as: UTF8.self).replacingOccurrences(of: "\"", with: "")
    }
    let a = fields(new), b = fields(old)
    for key in Set(a.keys).union(b.keys).sorted() where text(a[key]) != text(b[key]) {
        return (key, text(a[key]), text(b[key]))
    }
    return nil
}

extension TransferRun {
    /// Writes the transfer run's `config.yaml`: the task spec as resolved, `resolved` (the recipe with
    /// its defaults), and the run's seed, backbone and data (rank 0 alone under MPI).
    func writeConfig<R: Encodable>(command: String, spec: TaskSpec, resolved: R, backbone: LoadedBackbone, seed: UInt64,
                                   data: (train: ImageFolder, val: ImageFolder, name: String),
                                   extra: [String: String] = [:]) throws {
        guard Distributed.world.isMain else { return }
        var run = ["seed": String(seed), "checkpoint": backbone.url.path, "checkpoint_hash": backbone.hash,
                   "role": backbone.role, "train_data": data.train.root.path, "val_data": data.val.root.path]
        run.merge(extra) { _, new in new }
        try RunConfig(command: command, taskSource: spec.source, task: spec, resolved: resolved, run: run,
                      notes: spec.notes).write(into: dir)
    }
}
