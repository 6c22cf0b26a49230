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

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, evaluation = "protocol", dataset, head, recipe, metrics, seeds
    }
}

/// Where the images are and how they are fed to the backbone.
public struct DatasetSpec: Codable, Sendable {
    /// A short name for reports ("shapes", "cifar10", ...).
    public var name: String
    /// Folder holding the splits; relative paths are taken from the working directory.
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
    public var rootURL: URL { URL(fileURLWithPath: root) }

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

    /// A spec by path (`Tasks/x.yaml`, `my.yaml`) or by name of a file in `Tasks/` (`shapes-linprobe`).
    public static func load(_ nameOrPath: String) throws -> TaskSpec {
        let direct = URL(fileURLWithPath: nameOrPath)
        if FileManager.default.fileExists(atPath: direct.path) { return try load(contentsOf: direct) }
        let named = folder.appendingPathComponent(nameOrPath + ".yaml")
        if FileManager.default.fileExists(atPath: named.path) { return try load(contentsOf: named) }
        throw TaskSpecError(path: nameOrPath, problem: "is neither a task spec file nor the name of one in " +
                            "\(folder.path)/ (pass the YAML file's path, or set MAE_EVAL_HOME to the folder holding Tasks/)")
    }

    /// Reads and checks a YAML task spec.
    public static func load(contentsOf url: URL) throws -> TaskSpec {
        guard let text = try? String(contentsOf: url, encoding: .utf8) else {
            throw TaskSpecError(path: url.path, problem: "cannot be read as UTF-8 text")
        }
        return try parse(text, source: url.path)
    }

    /// Parses YAML text; `source` names it in errors.
    public static func parse(_ text: String, source: String) throws -> TaskSpec {
        let tree: Any?
        do { tree = try Yams.load(yaml: text) } catch {
            throw TaskSpecError(path: source, problem: "is not valid YAML (\(String(describing: error).split(separator: "\n").first ?? ""))")
        }
        guard let root = tree as? [String: Any] else {
            throw TaskSpecError(path: source, problem: "must be a YAML mapping of name, protocol, dataset, head, recipe, metrics, seeds")
        }
        try checkFields(root, allowed: fieldTable, path: "", source: source)
        let spec: TaskSpec
        do { spec = try YAMLDecoder().decode(TaskSpec.self, from: text) } catch let error as DecodingError {
            throw TaskSpecError(path: source, problem: describe(error))
        }
        try spec.validate(source: source)
        return spec
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

    static func checkFields(_ map: [String: Any], allowed: [String: [String]], path: String, source: String) throws {
        let known = allowed[path] ?? []
        for key in map.keys.sorted() {
            let full = path.isEmpty ? key : path + "." + key
            guard known.contains(key) else {
                throw TaskSpecError(path: source, problem: "has an unknown field '\(full)' (known here: \(known.joined(separator: ", ")))")
            }
            if let sub = map[key] as? [String: Any], allowed[full] != nil {
                try checkFields(sub, allowed: allowed, path: full, source: source)
            }
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func path(_ c: [CodingKey]) -> String { c.map { $0.intValue.map(String.init) ?? $0.stringValue }.joined(separator: ".") }
        switch error {
        case .keyNotFound(let key, let ctx):
            let p = path(ctx.codingPath + [key])
            return "lacks the required field '\(p)'"
        case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx):
            return "has a bad value for '\(path(ctx.codingPath))' (\(ctx.debugDescription.trimmingCharacters(in: ["."])))"
        case .dataCorrupted(let ctx):
            return "cannot be decoded at '\(path(ctx.codingPath))' (\(ctx.debugDescription.trimmingCharacters(in: ["."])))"
        @unknown default:
            return "cannot be decoded"
        }
    }

    func validate(source: String) throws {
        func fail(_ s: String) -> TaskSpecError { TaskSpecError(path: source, problem: s) }
        guard dataset.imgSize > 0 else { throw fail("dataset.img_size must be positive") }
        guard (0.05...1).contains(dataset.cropRatio) else { throw fail("dataset.crop_ratio must be in (0, 1]") }
        guard !seeds.isEmpty else { throw fail("seeds must list at least one seed") }
        if let k = head.lastBlocks, k < 1 { throw fail("head.last_blocks must be at least 1") }
        if let e = recipe.epochs, e < 1 { throw fail("recipe.epochs must be at least 1") }
        if let b = recipe.batchSize, b < 1 { throw fail("recipe.batch_size must be at least 1") }
        if let h = recipe.holdout, !(0.01...0.5).contains(h) { throw fail("recipe.holdout must be in [0.01, 0.5]") }
        if let f = recipe.folds, !(1...20).contains(f) { throw fail("recipe.folds must be in 1...20") }
        if let g = recipe.lrGrid, g.isEmpty || g.contains(where: { $0 <= 0 }) { throw fail("recipe.lr_grid must list positive learning rates") }
        if let g = recipe.wdGrid, g.isEmpty || g.contains(where: { $0 < 0 }) { throw fail("recipe.wd_grid must list weight decays >= 0") }
        if let m = recipe.mode, !["cached", "augmented"].contains(m) { throw fail("recipe.mode must be cached or augmented, not '\(m)'") }
        if let s = recipe.augmentation?.rrcScale, s.count != 2 || !(0 < s[0] && s[0] <= s[1] && s[1] <= 1) {
            throw fail("recipe.augmentation.rrc_scale must be [min, max] with 0 < min <= max <= 1")
        }
        for m in metrics where !["top1", "top5"].contains(m) { throw fail("metrics may list top1 and top5, not '\(m)'") }
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
                             " (lowest held-out cross-entropy), retrained on all of train (weight decay scaled by fit part / train size)")
            }
        case .finetune:
            let a = r.augmentation
            parts.append("\((r.optimizer ?? "adamw").uppercased()) blr \(r.baseLR ?? 1e-3), wd \(r.weightDecay ?? 0.05), batch \(r.batchSize ?? 64), " +
                         "\(r.epochs ?? 0) epochs, warmup \(r.warmupEpochs ?? 0) + cosine, layer decay \(r.layerDecay ?? 0.75), " +
                         "drop path \(r.dropPath ?? 0.1), label smoothing \(a?.labelSmoothing ?? 0.1), mixup \(a?.mixup ?? 0), cutmix \(a?.cutmix ?? 0), " +
                         "global pool + fc_norm")
        }
        return parts.joined(separator: "; ")
    }
}
