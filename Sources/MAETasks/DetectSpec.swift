import Foundation
import Yams

/// A detection + instance segmentation task (`Tasks/*-detect.yaml`): COCO-format data, the ViTDet
/// backbone and Mask R-CNN's sizes, the recipe and the seeds. Every field is required (no silent
/// defaults) and unknown fields are refused, as for the classification specs.
public struct DetectSpec: Codable, Sendable {
    public var name: String
    /// Always `detect`.
    public var evaluation: String
    public var dataset: DetectDataset
    public var model: DetectModel
    public var heads: DetectHeads
    public var recipe: DetectRecipe
    public var metrics: [String]
    public var seeds: [UInt64]
    /// Where the spec came from, for messages; not a YAML field.
    public var source = ""

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, evaluation = "protocol", dataset, model, heads, recipe, metrics, seeds
    }
}

/// COCO instances files and image folders; relative paths start at `root`, a relative `root` at the
/// spec file's folder.
public struct DetectDataset: Codable, Sendable {
    public var name: String
    public var root: String
    /// `shapes`: generate the embedded Shapes data (its scenes) at `root` when missing; `none` otherwise.
    public var generate: String
    public var trainAnnotations: String, trainImages: String
    public var valAnnotations: String, valImages: String
    /// The padded square input side (ViTDet: 1024).
    public var imgSize: Int
    /// The folder of the spec file; not a YAML field.
    public var folder: URL?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, root, generate, trainAnnotations = "train_annotations", trainImages = "train_images"
        case valAnnotations = "val_annotations", valImages = "val_images", imgSize = "img_size"
    }

    public var rootURL: URL {
        if root.hasPrefix("/") { return URL(fileURLWithPath: root) }
        return folder.map { $0.appendingPathComponent(root).standardizedFileURL } ?? URL(fileURLWithPath: root)
    }

    public func resolve(_ path: String) -> URL {
        path.hasPrefix("/") ? URL(fileURLWithPath: path) : rootURL.appendingPathComponent(path)
    }
}

/// The backbone as ViTDet adapts it and the pyramid and anchors on it.
public struct DetectModel: Codable, Sendable {
    /// Window side in patches; 0: the encoder's pretraining grid (ViTDet: 14 for a 224 px ViT/16).
    public var windowSize: Int
    /// Blocks with global attention; empty: evenly spaced (ViTDet-B: 2, 5, 8, 11).
    public var globalBlocks: [Int]
    public var dropPath: Double
    /// The pyramid's width (ViTDet: 256) and scale factors relative to the patch stride (4, 2, 1, 0.5).
    public var pyramidChannels: Int
    public var scaleFactors: [Double]
    /// One anchor size per pyramid level including the top max-pool level (ViTDet: 32 ... 512) and
    /// the aspect ratios (h / w) at every level.
    public var anchorSizes: [Double]
    public var aspectRatios: [Double]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case windowSize = "window_size", globalBlocks = "global_blocks", dropPath = "drop_path"
        case pyramidChannels = "pyramid_channels", scaleFactors = "scale_factors", anchorSizes = "anchor_sizes"
        case aspectRatios = "aspect_ratios"
    }
}

/// The RPN's and RoI heads' sizes and samples.
public struct DetectHeads: Codable, Sendable {
    public var convDim: Int, fcDim: Int, boxConvs: Int, maskConvs: Int
    /// Anchors sampled per image (256) and RoIs per image (512) at their positive fractions (0.5, 0.25).
    public var rpnBatchSize: Int, roiBatchSize: Int, roiPositiveFraction: Double

    enum CodingKeys: String, CodingKey, CaseIterable {
        case convDim = "conv_dim", fcDim = "fc_dim", boxConvs = "box_convs", maskConvs = "mask_convs"
        case rpnBatchSize = "rpn_batch_size", roiBatchSize = "roi_batch_size", roiPositiveFraction = "roi_positive_fraction"
    }
}

/// ViTDet's optimisation: AdamW with layer-wise lr decay, linear warmup from `warmup_factor` over
/// `warmup_iters` steps, then x `gamma` at each milestone (in epochs), large-scale jitter.
public struct DetectRecipe: Codable, Sendable {
    public var optimizer: String
    public var lr: Double
    public var weightDecay: Double
    public var layerDecay: Double
    public var batchSize: Int
    public var epochs: Int
    public var warmupIters: Int
    public var warmupFactor: Double
    public var milestones: [Double]
    public var gamma: Double
    public var lsjScale: [Double]

    enum CodingKeys: String, CodingKey, CaseIterable {
        case optimizer, lr, weightDecay = "weight_decay", layerDecay = "layer_decay", batchSize = "batch_size", epochs
        case warmupIters = "warmup_iters", warmupFactor = "warmup_factor", milestones, gamma, lsjScale = "lsj_scale"
    }

    /// One line for metrics.json and the report.
    public var summary: String {
        "AdamW lr \(plainNumber(lr)), wd \(plainNumber(weightDecay)), layer decay \(plainNumber(layerDecay)), batch \(batchSize), " +
            "\(epochs) epochs, warmup \(warmupIters) it from \(plainNumber(warmupFactor)), x\(plainNumber(gamma)) at epochs " +
            milestones.map(plainNumber).joined(separator: ", ") + ", LSJ \(plainNumber(lsjScale[0]))-\(plainNumber(lsjScale[1]))"
    }
}

extension DetectSpec {
    static let fieldTable: [String: [String]] = [
        "": CodingKeys.allCases.map(\.rawValue),
        "dataset": DetectDataset.CodingKeys.allCases.map(\.rawValue),
        "model": DetectModel.CodingKeys.allCases.map(\.rawValue),
        "heads": DetectHeads.CodingKeys.allCases.map(\.rawValue),
        "recipe": DetectRecipe.CodingKeys.allCases.map(\.rawValue),
    ]

    /// A spec by path or by the name of a file in the installation's `Tasks/` (`shapes-detect`).
    public static func load(_ nameOrPath: String) throws -> DetectSpec {
        if FileManager.default.fileExists(atPath: nameOrPath) { return try load(contentsOf: URL(fileURLWithPath: nameOrPath)) }
        let named = TaskSpec.folder.appendingPathComponent(nameOrPath + ".yaml")
        if FileManager.default.fileExists(atPath: named.path) { return try load(contentsOf: named) }
        throw TaskSpecError(path: nameOrPath, problem: "is neither a task spec file nor the name of one in \(TaskSpec.folder.path)/")
    }

    public static func load(contentsOf url: URL) throws -> DetectSpec {
        guard let data = FileManager.default.contents(atPath: url.path), let text = String(data: data, encoding: .utf8) else {
            throw TaskSpecError(path: url.path, problem: "cannot be read as UTF-8 text")
        }
        return try parse(text, source: url.path, folder: url.deletingLastPathComponent())
    }

    /// Parses and checks YAML text; `source` names it in errors.
    public static func parse(_ text: String, source: String, folder: URL? = nil) throws -> DetectSpec {
        guard let root = try composeBounded(text, source: source), case .mapping = root else {
            throw TaskSpecError(path: source, problem: "must be a YAML mapping of name, protocol, dataset, model, heads, recipe, metrics, seeds")
        }
        try TaskSpec.checkFields(root, path: "", source: source, table: fieldTable)
        var spec: DetectSpec
        do {
            spec = try YAMLDecoder().decode(DetectSpec.self, from: try Yams.serialize(node: root))
        } catch let error as DecodingError {
            throw TaskSpecError(path: source, problem: TaskSpec.describe(error, in: root))
        } catch {
            throw TaskSpecError(path: source, problem: "cannot be decoded")
        }
        spec.dataset.folder = folder
        spec.source = source
        try spec.validate()
        return spec
    }

    func validate() throws {
        func fail(_ s: String) -> TaskSpecError { TaskSpecError(path: source, problem: s) }
        func positive(_ v: Double, _ field: String) throws {
            guard v.isFinite, v > 0 else { throw fail("\(field) must be a positive number, not \(plainNumber(v))") }
        }
        guard evaluation == "detect" else { throw fail("protocol must be detect, not '\(evaluation)'") }
        guard !name.isEmpty else { throw fail("name must not be empty") }
        guard ["shapes", "none"].contains(dataset.generate) else { throw fail("dataset.generate must be shapes or none, not '\(dataset.generate)'") }
        guard (16...4096).contains(dataset.imgSize) else { throw fail("dataset.img_size must be in 16...4096, not \(dataset.imgSize)") }
        guard model.windowSize >= 0 else { throw fail("model.window_size must be 0 (the pretraining grid) or positive") }
        if let repeated = firstRepeat(model.globalBlocks) { throw fail("model.global_blocks lists \(repeated) twice") }
        guard model.globalBlocks.allSatisfy({ $0 >= 0 }) else { throw fail("model.global_blocks must be block indexes from 0") }
        guard (0..<1).contains(model.dropPath) else { throw fail("model.drop_path must be in [0, 1), not \(plainNumber(model.dropPath))") }
        guard model.pyramidChannels > 0 else { throw fail("model.pyramid_channels must be positive") }
        guard !model.scaleFactors.isEmpty, model.scaleFactors.allSatisfy({ [4, 2, 1, 0.5].contains($0) }),
              model.scaleFactors == model.scaleFactors.sorted(by: >), firstRepeat(model.scaleFactors) == nil else {
            throw fail("model.scale_factors must be decreasing values of 4, 2, 1, 0.5 (ViTDet's), not \(model.scaleFactors.map(plainNumber))")
        }
        guard model.anchorSizes.count == model.scaleFactors.count + 1 else {
            throw fail("model.anchor_sizes needs one size per pyramid level and one for the top level: \(model.scaleFactors.count + 1), not \(model.anchorSizes.count)")
        }
        for v in model.anchorSizes { try positive(v, "model.anchor_sizes") }
        guard !model.aspectRatios.isEmpty else { throw fail("model.aspect_ratios must list at least one ratio") }
        for v in model.aspectRatios { try positive(v, "model.aspect_ratios") }
        for (v, f) in [(heads.convDim, "conv_dim"), (heads.fcDim, "fc_dim"), (heads.rpnBatchSize, "rpn_batch_size"),
                       (heads.roiBatchSize, "roi_batch_size")] where v <= 0 {
            throw fail("heads.\(f) must be positive, not \(v)")
        }
        guard heads.boxConvs >= 0, heads.maskConvs >= 0 else { throw fail("heads.box_convs and heads.mask_convs must not be negative") }
        guard heads.roiPositiveFraction > 0, heads.roiPositiveFraction <= 1 else {
            throw fail("heads.roi_positive_fraction must be in (0, 1], not \(plainNumber(heads.roiPositiveFraction))")
        }
        guard recipe.optimizer == "adamw" else { throw fail("recipe.optimizer must be adamw (ViTDet's), not '\(recipe.optimizer)'") }
        try positive(recipe.lr, "recipe.lr")
        guard recipe.weightDecay >= 0, recipe.weightDecay.isFinite else { throw fail("recipe.weight_decay must not be negative") }
        guard recipe.layerDecay > 0, recipe.layerDecay <= 1 else { throw fail("recipe.layer_decay must be in (0, 1], not \(plainNumber(recipe.layerDecay))") }
        guard recipe.batchSize > 0, recipe.epochs > 0 else { throw fail("recipe.batch_size and recipe.epochs must be positive") }
        guard recipe.warmupIters >= 0, (0...1).contains(recipe.warmupFactor) else {
            throw fail("recipe.warmup_iters must not be negative and recipe.warmup_factor must be in [0, 1]")
        }
        guard recipe.milestones == recipe.milestones.sorted(), recipe.milestones.allSatisfy({ $0 > 0 && $0 <= Double(recipe.epochs) }) else {
            throw fail("recipe.milestones must be increasing epochs in (0, \(recipe.epochs)], not \(recipe.milestones.map(plainNumber))")
        }
        guard recipe.gamma > 0, recipe.gamma <= 1 else { throw fail("recipe.gamma must be in (0, 1], not \(plainNumber(recipe.gamma))") }
        guard recipe.lsjScale.count == 2, recipe.lsjScale[0] > 0, recipe.lsjScale[0] <= recipe.lsjScale[1] else {
            throw fail("recipe.lsj_scale must be [min, max] with 0 < min <= max, not \(recipe.lsjScale.map(plainNumber))")
        }
        guard Set(metrics) == ["bbox", "segm"], metrics.count == 2 else { throw fail("metrics must be [bbox, segm]") }
        guard !seeds.isEmpty else { throw fail("seeds must list at least one seed") }
        if let repeated = firstRepeat(seeds) { throw fail("seeds lists \(repeated) twice (each seed is one run folder)") }
    }
}
