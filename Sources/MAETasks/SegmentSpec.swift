import Foundation
import MAEDense
import MAEModels
import Yams

/// A semantic-segmentation task spec (`Tasks/shapes-segment*.yaml`, `Tasks/ade20k-upernet.yaml`):
/// the data with mmseg's resize/crop settings, the head, the recipe. Strict: every field is known
/// (an unknown key is an error naming it); relative dataset paths start at the file's folder.
public struct SegmentSpec: Codable, Sendable {
    public var name: String
    public var dataset: Dataset
    public var head: Head
    /// BEiT's options on the backbone (mmseg's MAE backbone); absent: MAE's plain ViT.
    public var backbone: Backbone?
    public var recipe: Recipe
    public var seeds: [UInt64]
    /// The file the spec came from (messages).
    public var source = ""
    /// Where relative dataset paths start.
    public var folder: URL?

    enum CodingKeys: String, CodingKey, CaseIterable { case name, dataset, head, backbone, recipe, seeds }

    public struct Dataset: Codable, Sendable {
        public var name: String
        /// The data root; relative to the spec's folder.
        public var root: String
        /// `shapes`: generated on first use (the Shapes scenes).
        public var generate: String?
        /// Image / label folders relative to `root`.
        public var trainImages: String
        public var trainLabels: String
        public var valImages: String
        public var valLabels: String
        public var numClasses: Int
        public var reduceZeroLabel: Bool
        /// Class names in label order (after reduce_zero_label); nil: "class k".
        public var classNames: [String]?
        /// mmseg's (long, short) resize scale.
        public var scale: [Int]
        public var ratioRange: [Double]
        /// Training crop and sliding window side.
        public var crop: Int
        /// Sliding-window stride.
        public var stride: Int
        public var catMaxRatio: Double

        enum CodingKeys: String, CodingKey, CaseIterable {
            case name, root, generate, trainImages = "train_images", trainLabels = "train_labels", valImages = "val_images"
            case valLabels = "val_labels", numClasses = "num_classes", reduceZeroLabel = "reduce_zero_label"
            case classNames = "class_names", scale, ratioRange = "ratio_range", crop, stride, catMaxRatio = "cat_max_ratio"
        }
    }

    public struct Head: Codable, Sendable {
        /// upernet | linear
        public var type: String
        /// UPerHead's width (mmseg 768 for ViT-B).
        public var channels: Int?
        /// The FCN auxiliary head's width (mmseg 256); 0: no auxiliary head.
        public var auxChannels: Int?
        public var auxWeight: Double?
        /// Linear head: how many last blocks are concatenated (1 "linear", 4 "+ms").
        public var blocks: Int?
        /// UperNet: the Feature2Pyramid neck's rescales, (4, 2, 1, 0.5) (mmseg's default) or (2, 1, 0.5, 0.25).
        public var rescales: [Double]?

        enum CodingKeys: String, CodingKey, CaseIterable {
            case type, channels, auxChannels = "aux_channels", auxWeight = "aux_weight", blocks, rescales
        }
    }

    /// `backbone: {rel_pos_bias: true, layer_scale: 1.0}`: BEiT's per-block extras as mmseg's MAE
    /// backbone has them, added to the loaded checkpoint's ViT and trained with it, initialised as
    /// mmseg's MAE does (tables zero, gammas at layer_scale). Each block's extras take its layer
    /// decay id; the tables (2-D) get weight decay, the gammas (1-D) none, as mmseg's constructor.
    public struct Backbone: Codable, Sendable {
        /// The relative position bias per block, for the crop's patch grid (mmseg: img_size = crop).
        public var relPosBias: Bool?
        /// Layer scale's initial gamma (mmseg's MAE configs: 1.0); absent: no layer scale.
        public var layerScale: Double?

        enum CodingKeys: String, CodingKey, CaseIterable { case relPosBias = "rel_pos_bias", layerScale = "layer_scale" }

        /// The options for a crop of `window` patches per side; nil when neither is asked for.
        public func options(window: Int) -> BEiTOptions? {
            guard relPosBias == true || layerScale != nil else { return nil }
            return BEiTOptions(layerScale: layerScale.map { Float($0) }, relativePositionWindow: relPosBias == true ? window : nil)
        }
    }

    public struct Recipe: Codable, Sendable {
        public var optimizer: String
        /// The peak learning rate (mmseg's lr, not scaled by batch).
        public var lr: Double
        public var weightDecay: Double
        public var betas: [Double]
        /// mmseg's layer decay rate (BEiT/MAE constructor); 1: none.
        public var layerDecay: Double
        public var dropPath: Double
        public var batchSize: Int
        public var epochs: Int
        /// Linear warmup, in epochs (mmseg: 1500 iterations).
        public var warmupEpochs: Double
        /// mmseg's PolyLR power.
        public var polyPower: Double
        public var minLR: Double
        /// Inference: whole | slide.
        public var testMode: String

        enum CodingKeys: String, CodingKey, CaseIterable {
            case optimizer, lr, weightDecay = "weight_decay", betas, layerDecay = "layer_decay", dropPath = "drop_path"
            case batchSize = "batch_size", epochs, warmupEpochs = "warmup_epochs", polyPower = "poly_power", minLR = "min_lr"
            case testMode = "test_mode"
        }
    }

    /// Fields per section, for the strict check.
    static let fields: [String: [String]] = [
        "": CodingKeys.allCases.map(\.rawValue), "dataset": Dataset.CodingKeys.allCases.map(\.rawValue),
        "head": Head.CodingKeys.allCases.map(\.rawValue), "recipe": Recipe.CodingKeys.allCases.map(\.rawValue),
        "backbone": Backbone.CodingKeys.allCases.map(\.rawValue),
    ]

    /// A spec by path, or by name of a file in the installation's `Tasks/`.
    public static func load(_ nameOrPath: String) throws -> SegmentSpec {
        var url = URL(fileURLWithPath: nameOrPath)
        if !FileManager.default.fileExists(atPath: url.path) {
            url = TaskSpec.folder.appendingPathComponent(nameOrPath + ".yaml")
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw TaskSpecError(path: nameOrPath, problem: "is neither a task spec file nor the name of one in \(TaskSpec.folder.path)/")
            }
        }
        guard let data = FileManager.default.contents(atPath: url.path), let text = String(data: data, encoding: .utf8) else {
            throw TaskSpecError(path: url.path, problem: "cannot be read as UTF-8 text")
        }
        var spec = try parse(text, source: url.path)
        spec.folder = url.deletingLastPathComponent()
        return spec
    }

    /// Parses and checks a YAML text; `source` names it in errors.
    public static func parse(_ text: String, source: String) throws -> SegmentSpec {
        guard let root = try composeBounded(text, source: source), case .mapping = root else {
            throw TaskSpecError(path: source, problem: "must be a YAML mapping of name, dataset, head, recipe, seeds")
        }
        try checkFields(root, path: "", source: source)
        var spec: SegmentSpec
        do {
            spec = try YAMLDecoder().decode(SegmentSpec.self, from: try Yams.serialize(node: root))
        } catch let DecodingError.keyNotFound(key, context) {
            let path = (context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: ".")
            throw TaskSpecError(path: source, problem: "lacks the field '\(path)'")
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw TaskSpecError(path: source, problem: "has a bad value for '\(context.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch {
            throw TaskSpecError(path: source, problem: "cannot be decoded as a segmentation task")
        }
        spec.source = source
        try spec.validate()
        return spec
    }

    static func checkFields(_ node: Node, path: String, source: String) throws {
        guard case .mapping(let map) = node, let known = fields[path] else { return }
        for (keyNode, value) in map {
            guard case .scalar(let key) = keyNode else { throw TaskSpecError(path: source, problem: "has a key that is not a name") }
            let full = path.isEmpty ? key.string : path + "." + key.string
            guard known.contains(key.string) else {
                throw TaskSpecError(path: source, problem: "has an unknown field '\(full)' (known here: \(known.joined(separator: ", ")))")
            }
            try checkFields(value, path: full, source: source)
        }
    }

    /// Refuses values no run could use, naming the field.
    public func validate() throws {
        func fail(_ field: String, _ problem: String) -> TaskSpecError { TaskSpecError(path: source, problem: "\(field) \(problem)") }
        let d = dataset, r = recipe
        guard d.numClasses >= 2 else { throw fail("dataset.num_classes", "must be at least 2") }
        guard d.scale.count == 2, d.scale.allSatisfy({ $0 > 0 }) else { throw fail("dataset.scale", "must be [long, short], both positive") }
        guard d.ratioRange.count == 2, d.ratioRange[0] > 0, d.ratioRange[0] <= d.ratioRange[1] else {
            throw fail("dataset.ratio_range", "must be [low, high] with 0 < low <= high")
        }
        guard d.crop > 0, d.stride > 0 else { throw fail("dataset.crop and dataset.stride", "must be positive") }
        guard d.catMaxRatio > 0, d.catMaxRatio <= 1 else { throw fail("dataset.cat_max_ratio", "must be in (0, 1]") }
        if let names = d.classNames, names.count != d.numClasses {
            throw fail("dataset.class_names", "has \(names.count) names for \(d.numClasses) classes")
        }
        guard ["upernet", "linear"].contains(head.type) else { throw fail("head.type", "must be upernet or linear, not \(head.type)") }
        guard r.optimizer == "adamw" else { throw fail("recipe.optimizer", "must be adamw (mmseg's), not \(r.optimizer)") }
        guard r.lr > 0, r.weightDecay >= 0, r.batchSize > 1, r.epochs > 0, r.warmupEpochs >= 0 else {
            throw fail("recipe", "needs lr > 0, weight_decay >= 0, batch_size > 1 (BatchNorm), epochs > 0, warmup_epochs >= 0")
        }
        guard r.betas.count == 2 else { throw fail("recipe.betas", "must be [beta1, beta2]") }
        guard r.layerDecay > 0, r.layerDecay <= 1 else { throw fail("recipe.layer_decay", "must be in (0, 1]") }
        guard ["whole", "slide"].contains(r.testMode) else { throw fail("recipe.test_mode", "must be whole or slide") }
        if let b = head.blocks, b < 1 { throw fail("head.blocks", "must be at least 1") }
        if let k = head.rescales, !Feature2Pyramid.supportedRescales.contains(k) {
            throw fail("head.rescales", "must be [4, 2, 1, 0.5] or [2, 1, 0.5, 0.25] (the two pyramids mmseg's Feature2Pyramid builds), not \(k)")
        }
        if let s = backbone?.layerScale, !(s.isFinite && s != 0) { throw fail("backbone.layer_scale", "must be a finite non-zero number") }
    }

    func resolve(_ path: String) -> URL {
        if path.hasPrefix("/") { return URL(fileURLWithPath: path) }
        let base = dataset.root.hasPrefix("/") ? URL(fileURLWithPath: dataset.root)
            : (folder ?? URL(fileURLWithPath: FileManager.default.currentDirectoryPath)).appendingPathComponent(dataset.root)
        return base.appendingPathComponent(path).standardizedFileURL
    }

    /// The data root (for generation).
    public var rootURL: URL { resolve(".") }

    /// The resize and crop settings.
    public var pipeline: SegmentationPipeline {
        SegmentationPipeline(scale: (dataset.scale[0], dataset.scale[1]), ratioRange: dataset.ratioRange[0]...dataset.ratioRange[1],
                             crop: dataset.crop, catMaxRatio: dataset.catMaxRatio)
    }

    /// The class names in label order.
    public var classNames: [String] { dataset.classNames ?? (0..<dataset.numClasses).map { "class \($0)" } }

    /// The recipe as one line for metrics.json and the report.
    public var recipeSummary: String {
        let r = recipe
        let neck = head.rescales.map { " rescales [\($0.map(plainNumber).joined(separator: ", "))]" } ?? ""
        return "\(head.type == "upernet" ? "UperNet (Feature2Pyramid\(neck) + UPerHead, FCN aux)" : "linear BN head, \(head.blocks ?? 1) block(s)"), " +
            "AdamW lr \(r.lr) wd \(r.weightDecay), layer decay \(r.layerDecay), drop path \(r.dropPath), batch \(r.batchSize), " +
            "\(r.epochs) epochs, warmup \(r.warmupEpochs) + poly \(r.polyPower), crop \(dataset.crop), \(r.testMode) inference" +
            (backbone?.relPosBias == true ? ", BEiT relative position bias" : "") +
            (backbone?.layerScale.map { ", layer scale \($0)" } ?? "")
    }
}
