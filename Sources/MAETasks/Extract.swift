import Foundation
import MAEData
import MAEDistributed
import MAEFormats
import MAEKernels
import MAEModels

/// Frozen-backbone features of a labelled dataset, in dataset order.
public struct FeatureSet: Sendable {
    /// (N, D) row-major.
    public var features: [Float]
    public var labels: [Int]
    public var width: Int
    public var classes: [String]
    public var count: Int { labels.count }

    /// Writes `features` (F32 [N, D]) and `labels` (I64 [N]) as safetensors with `metadata`: the
    /// file `mae-eval extract` writes and the feature cache keeps.
    public func write(to url: URL, metadata: [String: String]) throws {
        try SafeTensors(tensors: [("features", StoredTensor(shape: [count, width], floats: features)),
                                  ("labels", StoredTensor(shape: [count], int64s: labels.map(Int64.init)))],
                        metadata: metadata).write(to: url)
    }
}

/// What `mae-eval extract` does.
public struct ExtractOptions: Sendable {
    public var checkpoint: URL
    public var data: URL
    public var out: URL
    public var pooling: Pooling = .cls
    public var imgSize: Int?
    public var cropRatio: Double = 0.875
    public var heads: Int?
    public var batchSize = 64
    /// Compute threads (`--threads`); nil: every core.
    public var threads: Int?
    /// The linear layers' arithmetic (`--precision`); recorded in the file's metadata when bf16.
    public var precision = Precision.fp32
    /// A progress line on standard error.
    public var progress = true

    public init(checkpoint: URL, data: URL, out: URL) {
        self.checkpoint = checkpoint; self.data = data; self.out = out
    }
}

/// Loads a checkpoint for a command: `loadVisionTransformer` (which refuses incomplete or non-finite
/// weights), then the load's notes (resized pos_embed, dropped head or decoder, DeiT distilled) as
/// `note:` lines on standard error. Every command that builds a model from a checkpoint comes here,
/// so each says the same about the same file.
public func loadModel(from url: URL, options: LoadOptions) throws -> LoadedModel {
    let loaded = try loadVisionTransformer(from: url, options: options)
    for note in loaded.notes where Distributed.world.isMain { FileHandle.standardError.write(Data("note: \(url.lastPathComponent): \(note)\n".utf8)) }
    return loaded
}

/// Loads the checkpoint as a backbone, extracts features of every image of the ImageFolder and
/// writes `features` (F32 [N, D]) and `labels` (I64 [N]) as safetensors with provenance metadata.
/// Non-finite features stop it before anything is written. Returns the checkpoint's load notes
/// (already printed by `loadModel`). Under MPI the images are split over the ranks
/// (`probeFeatures`) and rank 0 writes the file, the same bytes as one process.
@discardableResult
public func runExtract(_ o: ExtractOptions) throws -> [String] {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    guard (0.05...1).contains(o.cropRatio) else { throw TaskError.badArgument("--crop-ratio must be in (0, 1]") }
    guard o.batchSize > 0 else { throw TaskError.badArgument("--batch-size must be positive") }
    // --out is checked before any work: never an input, never a folder, its folder writable.
    try checkOutputFile(o.out, flag: "--out", inputs: [("--checkpoint", o.checkpoint)])
    let folder = try ImageFolder(root: o.data)
    try checkOutputFile(o.out, flag: "--out", inputs: folder.samples.map { ("--data", $0.url) })
    var load = LoadOptions(heads: o.heads, imgSize: o.imgSize)
    load.precision = o.precision
    let loaded = try loadModel(from: o.checkpoint, options: load)
    // Exactly the pooling asked for (a probe would turn cls into avg for fc_norm checkpoints).
    var feature = ProbeFeature(model: loaded.model, requested: o.pooling, lastBlocks: 1)
    feature.pooling = o.pooling
    let set = try probeFeatures(model: loaded.model, feature: feature, folder: folder,
                                transform: .eval(size: loaded.model.config.imgSize, cropRatio: o.cropRatio),
                                batchSize: o.batchSize) { [progress = ProgressLine(enabled: o.progress)] done in
        progress.update("extracting", done: done, total: folder.count, unit: "images")
    }
    var meta = ["checkpoint": o.checkpoint.path, "data": o.data.path, "pool": o.pooling.rawValue,
                "img_size": "\(loaded.model.config.imgSize)", "crop_ratio": "\(o.cropRatio)",
                "classes": String(decoding: try JSONEncoder().encode(set.classes), as: UTF8.self)]
    if o.precision != .fp32 { meta["precision"] = o.precision.rawValue }
    if Distributed.world.isMain { try set.write(to: o.out, metadata: meta) }
    return loaded.notes
}
