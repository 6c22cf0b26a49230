import Foundation
import MAEData
import MAEFormats
import MAEModels
import Yams

/// Which classification-transfer protocol a task runs.
public enum TransferProtocol: String, Codable, Sendable {
    case linprobe, knn, finetune
}

/// A downstream classification task, read from a YAML file in `Tasks/`: the data, the head, the
/// recipe, the metrics and the seeds. Unknown fields are refused so a typo cannot silently fall
/// back to a default.
public struct TaskSpec: Codable, Sendable {
    public var name: String
    public var evaluation: TransferProtocol
    public var dataset: DatasetSpec
    public var head: HeadSpec
    public var recipe: RecipeSpec
    public var metrics: [String]
    public var seeds: [UInt64]
    /// Where the spec came from, with its `--set` overrides, for messages; not a YAML field.
    public var source = ""
    /// Changes made to the spec after it was read (a shortened warmup), for config.yaml; not a YAML field.
    public var notes: [String] = []

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, evaluation = "protocol", dataset, head, recipe, metrics, seeds
    }
}

/// Where the images are and how they are fed to the backbone.
public struct DatasetSpec: Codable, Sendable {
    /// A short name for reports ("shapes", "cifar10", ...).
    public var name: String
    /// Folder holding the splits; a relative path is taken from the spec file's folder.
    public var root: String
    /// `shapes`: generate the embedded Shapes dataset at `root` when it is missing.
    public var generate: String?
    /// Train and val splits: ImageFolder folders, relative to `root` (or absolute).
    public var train: String
    public var val: String
    /// Input side the backbone sees; pos_embed is resized when it differs from the checkpoint's.
    public var imgSize: Int
    /// Eval transform: resize the short side to imgSize / cropRatio, center-crop imgSize.
    public var cropRatio: Double

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, root, generate, train, val, imgSize = "img_size", cropRatio = "crop_ratio"
    }

    public var trainURL: URL { resolve(train) }
    public var valURL: URL { resolve(val) }
    /// The folder of the spec file relative paths start from (nil: the working directory); not a YAML field.
    public var folder: URL?
    public var rootURL: URL {
        if root.hasPrefix("/") { return URL(fileURLWithPath: root) }
        return folder.map { $0.appendingPathComponent(root).standardizedFileURL } ?? URL(fileURLWithPath: root)
    }

    func resolve(_ split: String) -> URL {
        split.hasPrefix("/") ? URL(fileURLWithPath: split) : rootURL.appendingPathComponent(split)
    }
}

/// What reads the backbone's features.
public struct HeadSpec: Codable, Sendable {
    /// `cls`: the cls token after the final norm (MAE's probe feature); `avg`: mean of patch tokens.
    public var pooling: Pooling
    /// Concatenate the pooled features of the last k blocks (each after the final norm).
    public var lastBlocks: Int?
    /// BatchNorm1d without affine before the linear layer (MAE's linear probe).
    public var batchNorm: Bool?
    /// Std of the truncated-normal init of the linear layer (MAE: 0.01 probe, 2e-5 fine-tune).
    public var initStd: Float?
    /// kNN: neighbours and softmax temperature (DINO: 20, 0.07).
    public var k: Int?
    public var temperature: Float?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case pooling, lastBlocks = "last_blocks", batchNorm = "batch_norm", initStd = "init_std", k, temperature
    }
}

/// Training recipe. Fields a protocol does not use may be left out.
public struct RecipeSpec: Codable, Sendable {
    /// linprobe: `cached` (features once, a grid of heads) or `augmented` (MAE's protocol).
    public var mode: String?
    public var optimizer: String?
    /// Base learning rate; the actual lr is base_lr * batch_size / 256 (MAE's scaling rule).
    public var baseLR: Double?
    public var weightDecay: Double?
    public var batchSize: Int?
    public var epochs: Int?
    public var warmupEpochs: Double?
    public var minLR: Double?
    /// linprobe cached: learning rates and weight decays tried, all at once (DINOv2).
    public var lrGrid: [Double]?
    public var wdGrid: [Double]?
    /// Fraction of train held out to select the grid point (fixed seed).
    public var holdout: Double?
    /// Select on a stratified k-fold split of train instead (k > 1), as a cross-validated
    /// logistic regression does; costs k grid trainings.
    public var folds: Int?
    /// linprobe cached, low-shot: keep K training images per class (`shots`) or a class-balanced
    /// fraction of them (`label_fraction`), seeded by the run's seed; at most one of the two.
    public var shots: Int?
    public var labelFraction: Double?
    /// linprobe augmented: its own schedule (forward passes per epoch make it much slower).
    public var augmented: AugmentedRecipe?
    /// finetune: layer-wise lr decay, stochastic depth, gradient clipping, partial fine-tuning.
    public var layerDecay: Double?
    public var dropPath: Double?
    public var clipGrad: Double?
    public var blocks: Int?
    public var augmentation: AugmentationSpec?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case mode, optimizer, baseLR = "base_lr", weightDecay = "weight_decay", batchSize = "batch_size", epochs
        case warmupEpochs = "warmup_epochs", minLR = "min_lr", lrGrid = "lr_grid", wdGrid = "wd_grid", holdout, folds
        case shots, labelFraction = "label_fraction"
        case augmented, layerDecay = "layer_decay", dropPath = "drop_path", clipGrad = "clip_grad", blocks
        case augmentation
    }
}

/// MAE's linear-probe schedule for `--mode augmented`.
public struct AugmentedRecipe: Codable, Sendable {
    public var optimizer: String
    public var baseLR: Double
    public var weightDecay: Double
    public var batchSize: Int
    public var epochs: Int
    public var warmupEpochs: Double

    enum CodingKeys: String, CodingKey, CaseIterable {
        case optimizer, baseLR = "base_lr", weightDecay = "weight_decay", batchSize = "batch_size", epochs
        case warmupEpochs = "warmup_epochs"
    }
}

/// Training-time augmentation.
public struct AugmentationSpec: Codable, Sendable {
    /// RandomResizedCrop area range and horizontal flip.
    public var rrcScale: [Double]?
    public var flip: Bool?
    /// Mixup / CutMix alphas (0 disables), the chance of mixing a batch, of CutMix over Mixup.
    public var mixup: Double?
    public var cutmix: Double?
    public var mixupProb: Double?
    public var switchProb: Double?
    public var labelSmoothing: Double?
    /// timm's RandAugment policy string (MAE: rand-m9-mstd0.5-inc1).
    public var randAugment: String?
    /// Random erasing probability after normalisation (MAE fine-tuning: 0.25, pixel mode).
    public var reprob: Double?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case rrcScale = "rrc_scale", flip, mixup, cutmix, mixupProb = "mixup_prob", switchProb = "switch_prob"
        case labelSmoothing = "label_smoothing", randAugment = "rand_augment", reprob
    }
}

/// A number for messages: `-1`, not `-1.0`.
func plainNumber(_ v: Double) -> String {
    v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(v)
}

/// The first element that occurs twice.
func firstRepeat<T: Hashable>(_ items: [T]) -> T? {
    var seen = Set<T>()
    return items.first { !seen.insert($0).inserted }
}

/// A task spec that cannot be used; the description is one sentence naming the file.
public struct TaskSpecError: Error, LocalizedError, CustomStringConvertible {
    public let path: String
    public let problem: String
    public var description: String { "\(path): \(problem)." }
    public var errorDescription: String? { description }
}

extension TaskSpec {
    /// Folder of the shipped task specs (the installation's `Tasks/`).
    public static let folder = Installation.current.tasks

    /// A spec by path (`Tasks/x.yaml`, `my.yaml`) or by name of a file in `Tasks/` (`shapes-linprobe`),
    /// with `--set key=value` overrides applied before it is checked.
    public static func load(_ nameOrPath: String, overrides: [String] = []) throws -> TaskSpec {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: nameOrPath, isDirectory: &isFolder) {
            guard !isFolder.boolValue else {
                throw TaskSpecError(path: nameOrPath, problem: "is a folder, not a task spec file")
            }
            return try load(contentsOf: URL(fileURLWithPath: nameOrPath), overrides: overrides)
        }
        let named = folder.appendingPathComponent(nameOrPath + ".yaml")
        if FileManager.default.fileExists(atPath: named.path) { return try load(contentsOf: named, overrides: overrides) }
        throw TaskSpecError(path: nameOrPath, problem: "is neither a task spec file nor the name of one in " +
                            "\(folder.path)/ (pass the YAML file's path, or set MAE_EVAL_HOME to the folder holding Tasks/)")
    }

    /// Reads and checks a YAML task spec; relative dataset paths are taken from the file's folder.
    public static func load(contentsOf url: URL, overrides: [String] = []) throws -> TaskSpec {
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isFolder), isFolder.boolValue {
            throw TaskSpecError(path: url.path, problem: "is a folder, not a task spec file")
        }
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw TaskSpecError(path: url.path, problem: "cannot be read")
        }
        guard data.count <= YAMLLimits().maxBytes else {
            throw TaskSpecError(path: url.path, problem: "is \(data.count) bytes long, more than a task spec may be (\(YAMLLimits().maxBytes))")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw TaskSpecError(path: url.path, problem: "is not UTF-8 text")
        }
        return try parse(text, source: url.path, overrides: overrides, folder: url.deletingLastPathComponent())
    }

    /// Parses YAML text; `source` names it in errors, `folder` is where relative dataset paths start
    /// (nil: the working directory). `overrides` are `dotted.path=value` (`--set`), each value a YAML
    /// scalar or flow sequence, applied to the node tree before decoding so the same checks run.
    public static func parse(_ text: String, source: String, overrides: [String] = [], folder: URL? = nil) throws -> TaskSpec {
        let described = overrides.isEmpty ? source : source + " with --set " + overrides.joined(separator: " --set ")
        guard var root = try composeBounded(text, source: source), case .mapping = root else {
            throw TaskSpecError(path: source, problem: "must be a YAML mapping of name, protocol, dataset, head, recipe, metrics, seeds")
        }
        try checkFields(root, path: "", source: source)
        for item in overrides { try applyOverride(item, to: &root) }
        let spec: TaskSpec
        do {
            let canonical = try Yams.serialize(node: root)
            spec = try YAMLDecoder().decode(TaskSpec.self, from: canonical)
        } catch let error as DecodingError {
            throw TaskSpecError(path: described, problem: describe(error, in: root))
        } catch {
            throw TaskSpecError(path: described, problem: "cannot be decoded")
        }
        var checked = spec
        checked.dataset.folder = folder
        checked.source = described
        try checkUsedFields(root, evaluation: spec.evaluation, source: described)
        try checked.validate(source: described)
        return checked
    }

    /// Known fields per nesting path ("" is the top level).
    static let fieldTable: [String: [String]] = [
        "": TaskSpec.CodingKeys.allCases.map(\.rawValue),
        "dataset": DatasetSpec.CodingKeys.allCases.map(\.rawValue),
        "head": HeadSpec.CodingKeys.allCases.map(\.rawValue),
        "recipe": RecipeSpec.CodingKeys.allCases.map(\.rawValue),
        "recipe.augmented": AugmentedRecipe.CodingKeys.allCases.map(\.rawValue),
        "recipe.augmentation": AugmentationSpec.CodingKeys.allCases.map(\.rawValue),
    ]

    /// The fields each protocol reads (`section.*`: all of its fields): anything else
    /// present would be ignored while the recorded recipe showed it, so it is refused.
    static let usedFields: [TransferProtocol: Set<String>] = {
        let common: Set<String> = ["name", "protocol", "dataset", "dataset.*", "metrics", "seeds", "head", "recipe", "head.pooling",
                                   "head.last_blocks"]
        return [
            .knn: common.union(["head.k", "head.temperature"]),
            .linprobe: common.union(["head.batch_norm", "head.init_std", "recipe.mode", "recipe.optimizer", "recipe.lr_grid",
                                     "recipe.wd_grid", "recipe.batch_size", "recipe.epochs", "recipe.warmup_epochs",
                                     "recipe.holdout", "recipe.folds", "recipe.shots", "recipe.label_fraction", "recipe.augmented", "recipe.augmented.*", "recipe.augmentation",
                                     "recipe.augmentation.rrc_scale", "recipe.augmentation.flip"]),
            .finetune: common.subtracting(["head.last_blocks"]).union([
                "head.init_std", "recipe.optimizer", "recipe.base_lr", "recipe.weight_decay", "recipe.batch_size",
                "recipe.epochs", "recipe.warmup_epochs", "recipe.min_lr", "recipe.layer_decay", "recipe.drop_path",
                "recipe.clip_grad", "recipe.blocks", "recipe.augmentation", "recipe.augmentation.*"]),
        ]
    }()

    /// The optimizers each protocol (and linprobe mode) runs.
    static let optimizers: [String: [String]] = ["finetune": ["adamw"], "linprobe cached": ["sgd"], "linprobe augmented": ["lars"]]

    /// Refuses non-string or repeated keys and unknown fields, section by section, against `table`
    /// (the classification specs' fields unless another spec passes its own).
    static func checkFields(_ node: Node, path: String, source: String, table: [String: [String]] = fieldTable) throws {
        guard case .mapping(let map) = node else { return }
        let known = table[path] ?? []
        var seen: [String: Int] = [:]
        for (keyNode, value) in map {
            guard case .scalar(let key) = keyNode else {
                throw TaskSpecError(path: source, problem: "has a key that is not a name" + (path.isEmpty ? "" : " in '\(path)'"))
            }
            let full = path.isEmpty ? key.string : path + "." + key.string
            let line = (keyNode.mark?.line).map { $0 } ?? 0
            if let first = seen[key.string] {
                throw TaskSpecError(path: source, problem: "sets '\(full)' twice (lines \(first) and \(line)); keep one")
            }
            seen[key.string] = line
            guard known.contains(key.string) else {
                throw TaskSpecError(path: source, problem: "has an unknown field '\(full)' (known here: \(known.joined(separator: ", ")))")
            }
            if table[full] != nil { try checkFields(value, path: full, source: source, table: table) }
        }
    }

    /// Refuses fields the spec's protocol would not read.
    static func checkUsedFields(_ root: Node, evaluation: TransferProtocol, source: String) throws {
        let used = usedFields[evaluation]!
        func walk(_ node: Node, _ path: String) throws {
            guard case .mapping(let map) = node else { return }
            for (key, value) in map {
                let full = path.isEmpty ? key.quoted : path + "." + key.quoted
                guard used.contains(full) || used.contains(path + ".*") else {
                    throw TaskSpecError(path: source, problem: "sets '\(full)', which a \(evaluation.rawValue) task does not use; remove it")
                }
                if fieldTable[full] != nil { try walk(value, full) }
            }
        }
        try walk(root, "")
    }

    /// Applies one `dotted.path=value` override to the spec's node tree.
    static func applyOverride(_ item: String, to root: inout Node) throws {
        let flag = "--set \(item)"
        guard let eq = item.firstIndex(of: "="), eq != item.startIndex else {
            throw TaskSpecError(path: flag, problem: "must be KEY=VALUE with KEY a dotted task-spec field such as recipe.base_lr")
        }
        let keys = item[..<eq].split(separator: ".", omittingEmptySubsequences: false).map(String.init)
        var path = ""
        for (i, key) in keys.enumerated() {
            let known = fieldTable[path] ?? []
            guard known.contains(key) else {
                let full = path.isEmpty ? key : path + "." + key
                throw TaskSpecError(path: flag, problem: "names no task-spec field: '\(full)' is unknown" +
                                    (known.isEmpty ? " ('\(path)' has no sub-fields)" : " (known here: \(known.joined(separator: ", ")))"))
            }
            path = path.isEmpty ? key : path + "." + key
            if i < keys.count - 1 && fieldTable[path] == nil {
                throw TaskSpecError(path: flag, problem: "names no task-spec field: '\(path)' has no sub-fields")
            }
        }
        let text = String(item[item.index(after: eq)...])
        guard let value = try composeBounded(text, source: flag), !text.trimmingCharacters(in: .whitespaces).isEmpty else {
            throw TaskSpecError(path: flag, problem: "has no value after '='")
        }
        if case .mapping = value {
            throw TaskSpecError(path: flag, problem: "must set one field to a scalar or a [list], not a mapping")
        }
        func set(_ node: inout Node, _ rest: ArraySlice<String>) {
            var map: Node.Mapping
            if case .mapping(let m) = node { map = m } else { map = Node.Mapping([]) }
            let key = rest.first!
            if rest.count == 1 {
                map[key] = value
            } else {
                var child = map[key] ?? Node.mapping(Node.Mapping([]))
                set(&child, rest.dropFirst())
                map[key] = child
            }
            node = .mapping(map)
        }
        set(&root, keys[...])
    }

    /// A decoding error as one sentence fragment naming the field, in the project's words.
    static func describe(_ error: DecodingError, in root: Node) -> String {
        func path(_ c: [CodingKey]) -> String {
            c.reduce("") { text, key in
                if let i = key.intValue { return text + "[\(i)]" }
                return text.isEmpty ? key.stringValue : text + "." + key.stringValue
            }
        }
        func value(at c: [CodingKey]) -> Node? {
            var node: Node? = root
            for key in c {
                switch node {
                case .mapping(let m)?: node = m[key.stringValue]
                case .sequence(let s)?: node = key.intValue.flatMap { $0 < s.count ? s[$0] : nil }
                default: return nil
                }
            }
            return node
        }
        func kind(_ type: Any.Type) -> String {
            switch type {
            case is Int.Type: "an integer"
            case is UInt64.Type: "a non-negative integer"
            case is Double.Type, is Float.Type: "a number"
            case is String.Type: "a string"
            case is Bool.Type: "true or false"
            case is [Double].Type, is [String].Type, is [UInt64].Type: "a list"
            case is TransferProtocol.Type: "linprobe, knn or finetune"
            case is Pooling.Type: "cls or avg"
            default: "a mapping"
            }
        }
        switch error {
        case .keyNotFound(let key, let ctx):
            return "lacks the required field '\(path(ctx.codingPath + [key]))'"
        case .typeMismatch(let type, let ctx), .valueNotFound(let type, let ctx):
            let shown = value(at: ctx.codingPath).map { "'\($0.quoted)'" } ?? "that"
            return "\(path(ctx.codingPath)) must be \(kind(type)), not \(shown)"
        case .dataCorrupted(let ctx):
            let shown = value(at: ctx.codingPath).map { " '\($0.quoted)'" } ?? ""
            let p = path(ctx.codingPath)
            if p == "protocol" { return "protocol must be linprobe, knn or finetune, not\(shown)" }
            if p == "head.pooling" { return "head.pooling must be cls or avg, not\(shown)" }
            return "has a value\(shown) that cannot be read at '\(p)'"
        @unknown default:
            return "cannot be decoded"
        }
    }

    func validate(source: String) throws {
        func fail(_ s: String) -> TaskSpecError { TaskSpecError(path: source, problem: s) }
        func check(_ value: Double?, _ field: String, _ domain: String, _ ok: (Double) -> Bool) throws {
            if let v = value, !(v.isFinite && ok(v)) { throw fail("\(field) must be \(domain), not \(plainNumber(v))") }
        }
        guard !name.isEmpty else { throw fail("name must not be empty") }
        guard (1...4096).contains(dataset.imgSize) else { throw fail("dataset.img_size must be in 1...4096, not \(dataset.imgSize)") }
        try check(dataset.cropRatio, "dataset.crop_ratio", "in [0.05, 1]") { (0.05...1).contains($0) }
        if let g = dataset.generate, g != "shapes" { throw fail("dataset.generate may only be shapes, not '\(g)'") }
        guard !seeds.isEmpty else { throw fail("seeds must list at least one seed") }
        if let repeated = firstRepeat(seeds) { throw fail("seeds lists \(repeated) twice (each seed is one run folder)") }
        for m in metrics where !["top1", "top5"].contains(m) { throw fail("metrics may list top1 and top5, not '\(m)'") }
        if let repeated = firstRepeat(metrics) { throw fail("metrics lists \(repeated) twice") }

        if let k = head.lastBlocks, k < 1 { throw fail("head.last_blocks must be at least 1") }
        if evaluation == .finetune && head.pooling != .avg {
            throw fail("head.pooling must be avg for fine-tuning (global pool + fc_norm, MAE's), not \(head.pooling.rawValue)")
        }
        if let k = head.k, k < 1 { throw fail("head.k must be at least 1, not \(k)") }
        try check(head.temperature.map(Double.init), "head.temperature", "a positive number") { $0 > 0 }
        try check(head.initStd.map(Double.init), "head.init_std", "in (0, 1]") { $0 > 0 && $0 <= 1 }

        let r = recipe
        if let m = r.mode, !["cached", "augmented"].contains(m) { throw fail("recipe.mode must be cached or augmented, not '\(m)'") }
        if let o = r.optimizer {
            let key = evaluation == .finetune ? "finetune" : "linprobe cached"
            let supported = Self.optimizers[key] ?? []
            guard supported.contains(o.lowercased()) else {
                throw fail("recipe.optimizer '\(o)' is not supported by a \(key) task (supported: \(supported.joined(separator: ", ")))")
            }
        }
        if let e = r.epochs, !(1...100_000).contains(e) { throw fail("recipe.epochs must be in 1...100000, not \(e)") }
        if let b = r.batchSize, !(1...65_536).contains(b) { throw fail("recipe.batch_size must be in 1...65536, not \(b)") }
        try check(r.baseLR, "recipe.base_lr", "a positive number") { $0 > 0 }
        try check(r.weightDecay, "recipe.weight_decay", "a number >= 0") { $0 >= 0 }
        let epochs = r.epochs ?? (evaluation == .finetune ? 10 : 100)
        try check(r.warmupEpochs, "recipe.warmup_epochs", "in [0, \(epochs)) (below recipe.epochs)") { $0 >= 0 && $0 < Double(epochs) }
        try check(r.minLR, "recipe.min_lr", "a number >= 0") { $0 >= 0 }
        if let minLR = r.minLR, evaluation == .finetune {
            let lr = FineTuneRecipe(self).lr
            guard minLR <= lr else { throw fail("recipe.min_lr \(minLR) is above the learning rate \(lr) (base_lr x batch_size / 256)") }
        }
        if let g = r.lrGrid, g.isEmpty || g.contains(where: { !$0.isFinite || $0 <= 0 }) {
            throw fail("recipe.lr_grid must list positive finite learning rates")
        }
        if let g = r.wdGrid, g.isEmpty || g.contains(where: { !$0.isFinite || $0 < 0 }) {
            throw fail("recipe.wd_grid must list finite weight decays >= 0")
        }
        try check(r.holdout, "recipe.holdout", "in [0.01, 0.5]") { (0.01...0.5).contains($0) }
        if let f = r.folds, !(1...20).contains(f) { throw fail("recipe.folds must be in 1...20") }
        if r.shots != nil || r.labelFraction != nil {
            guard evaluation == .linprobe, r.mode ?? "cached" == "cached" else {
                throw fail("recipe.shots and recipe.label_fraction apply to the cached linear probe only")
            }
            do { _ = try LabelBudget.of(r) } catch let TaskError.badArgument(why) { throw fail(why) }
        }
        try check(r.layerDecay, "recipe.layer_decay", "in (0, 1]") { $0 > 0 && $0 <= 1 }
        try check(r.dropPath, "recipe.drop_path", "in [0, 1)") { $0 >= 0 && $0 < 1 }
        try check(r.clipGrad, "recipe.clip_grad", "a positive number") { $0 > 0 }
        if let b = r.blocks, b < 0 { throw fail("recipe.blocks must be >= 0, not \(b)") }

        if let a = r.augmented {
            guard a.optimizer.lowercased() == "lars" else {
                throw fail("recipe.augmented.optimizer '\(a.optimizer)' is not supported by a linprobe augmented task (supported: lars)")
            }
            try check(a.baseLR, "recipe.augmented.base_lr", "a positive number") { $0 > 0 }
            try check(a.weightDecay, "recipe.augmented.weight_decay", "a number >= 0") { $0 >= 0 }
            guard (1...65_536).contains(a.batchSize) else { throw fail("recipe.augmented.batch_size must be in 1...65536, not \(a.batchSize)") }
            guard (1...100_000).contains(a.epochs) else { throw fail("recipe.augmented.epochs must be in 1...100000, not \(a.epochs)") }
            try check(a.warmupEpochs, "recipe.augmented.warmup_epochs", "in [0, \(a.epochs)) (below recipe.augmented.epochs)") {
                $0 >= 0 && $0 < Double(a.epochs)
            }
        }
        if let g = r.augmentation {
            if let s = g.rrcScale, s.count != 2 || !(0 < s[0] && s[0] <= s[1] && s[1] <= 1) {
                throw fail("recipe.augmentation.rrc_scale must be [min, max] with 0 < min <= max <= 1")
            }
            if g.flip == false { throw fail("recipe.augmentation.flip false is not supported (the train transforms always flip, as MAE's)") }
            try check(g.mixup, "recipe.augmentation.mixup", "a number >= 0") { $0 >= 0 }
            try check(g.cutmix, "recipe.augmentation.cutmix", "a number >= 0") { $0 >= 0 }
            try check(g.mixupProb, "recipe.augmentation.mixup_prob", "in [0, 1]") { (0...1).contains($0) }
            try check(g.switchProb, "recipe.augmentation.switch_prob", "in [0, 1]") { (0...1).contains($0) }
            try check(g.labelSmoothing, "recipe.augmentation.label_smoothing", "in [0, 1)") { $0 >= 0 && $0 < 1 }
            try check(g.reprob, "recipe.augmentation.reprob", "in [0, 1]") { (0...1).contains($0) }
            if let policy = g.randAugment {
                let ra: RandAugment
                do { ra = try RandAugment(config: policy) } catch {
                    throw fail("recipe.augmentation.rand_augment '\(policy)' is not a timm RandAugment policy (\(error))")
                }
                // timm clips the sampled magnitude to [0, mmax] (default 10): a larger m would be silently
                // clipped; its level functions are written for m/10 and stay meaningful up to m 30.
                guard ra.magnitudeMax <= 30, ra.magnitude <= ra.magnitudeMax else {
                    throw fail("recipe.augmentation.rand_augment '\(policy)' needs magnitude m <= mmax <= 30 (timm's scale: 0...10, mmax 10 by default)")
                }
                guard (0...16).contains(ra.layers), (0...1).contains(ra.probability), ra.magnitudeStd >= 0 else {
                    throw fail("recipe.augmentation.rand_augment '\(policy)' needs n in 0...16, p in [0, 1] and mstd >= 0")
                }
            }
        }
    }

    /// `--epochs n` for every schedule of the spec. A warmup that would not end before the new last
    /// epoch is shortened in proportion (the task's warmup fraction of its epochs) so the lr still
    /// peaks; returns a note for each such change, which the resolved config records.
    public mutating func setEpochs(_ n: Int) -> [String] {
        var notes: [String] = []
        func shorten(_ warmup: inout Double?, _ old: Int, _ field: String) {
            guard let w = warmup, w >= Double(n) else { return }
            let scaled = w * Double(n) / Double(old)
            notes.append("\(field) \(w) is not below --epochs \(n): shortened to \(scaled) (the task's \(w) of \(old) epochs)")
            self.notes.append(notes.last!)
            warmup = scaled
        }
        if evaluation != .knn {
            shorten(&recipe.warmupEpochs, recipe.epochs ?? (evaluation == .finetune ? 10 : 100), "recipe.warmup_epochs")
            recipe.epochs = n
        }
        if var a = recipe.augmented {
            var w: Double? = a.warmupEpochs
            shorten(&w, a.epochs, "recipe.augmented.warmup_epochs")
            a.warmupEpochs = w!
            a.epochs = n
            recipe.augmented = a
        }
        return notes
    }

    /// Checks the spec again after command-line flags changed it; `flags` name them in errors.
    public func revalidate(flags: [String]) throws {
        try validate(source: source + (flags.isEmpty ? "" : " with " + flags.joined(separator: " ")))
    }

    /// The recipe in one line for reports.
    public var recipeSummary: String {
        let r = recipe
        var parts: [String] = []
        switch evaluation {
        case .knn:
            parts.append("weighted kNN on cosine similarity, k \(head.k ?? 20), T \(head.temperature ?? 0.07)")
        case .linprobe:
            if r.mode ?? "cached" == "augmented", let a = r.augmented {
                parts.append("\(a.optimizer.uppercased()) blr \(a.baseLR) (lr = blr x \(a.batchSize)/256), wd \(a.weightDecay), " +
                             "batch \(a.batchSize), \(a.epochs) epochs, warmup \(a.warmupEpochs), BatchNorm (no affine) + linear, RRC + flip")
            } else {
                parts.append("cached features standardised; \(r.lrGrid?.count ?? 0) lr x \(r.wdGrid?.count ?? 1) wd heads trained at once " +
                             "(SGD momentum 0.9, batch \(r.batchSize ?? 256), \(r.epochs ?? 100) epochs, warmup \(r.warmupEpochs ?? 0) + cosine), " +
                             ((r.folds ?? 1) > 1 ? "selected by \(r.folds!)-fold cross-validation on train"
                                                 : "selected on \(Int((r.holdout ?? 0.1) * 100))% of train") +
                             " (lowest held-out cross-entropy), retrained on all of train (weight decay scaled by fit part / train size)" +
                             ((try? LabelBudget.of(r)).flatMap { $0 }.map { "; low-shot: \($0.described) (class-balanced, seeded)" } ?? ""))
            }
        case .finetune:
            let f = FineTuneRecipe(self)
            parts.append("\(f.optimizer.uppercased()) blr \(f.baseLR), wd \(f.weightDecay), batch \(f.batchSize), " +
                         "\(f.epochs) epochs, warmup \(f.warmupEpochs) + cosine to \(f.minLR), layer decay \(f.layerDecay), " +
                         "drop path \(f.dropPath), label smoothing \(f.labelSmoothing), mixup \(f.mixup), cutmix \(f.cutmix), " +
                         "global pool + fc_norm")
        }
        return parts.joined(separator: "; ")
    }
}
