import Foundation
import MAEData
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
}

/// Runs the backbone in eval mode over `folder` (MAE's eval transform: resize the short side to
/// size / cropRatio, bicubic, then center-crop) and pools each image: `.cls` is the cls token after
/// the final norm, `.avg` the mean of the patch tokens after it (after fc_norm for fine-tuned models).
public func extractFeatures(model: VisionTransformer, folder: ImageFolder, pooling: Pooling,
                            cropRatio: Double = 0.875, batchSize: Int = 64,
                            workers: Int = 2) throws -> FeatureSet {
    guard folder.count > 0 else { throw TaskError.badArgument("the dataset has no images") }
    let size = model.config.imgSize, d = model.config.embedDim
    let loader = DataLoader(source: folder, transform: MAETransform.eval(size: size, cropRatio: cropRatio),
                            batchSize: batchSize, shuffle: false, workers: workers)
    var features = [Float](repeating: 0, count: folder.count * d)
    var labels = [Int](repeating: 0, count: folder.count)
    let iterator = loader.epoch(0)
    while let batch = try iterator.next() {
        let f = batch.images.withUnsafeBufferPointer {
            model.forwardFeatures(images: $0.baseAddress!, batch: batch.count, pooling: pooling)
        }
        for (row, index) in batch.indices.enumerated() {
            for i in 0..<d { features[index * d + i] = f[row * d + i] }
            labels[index] = batch.labels[row]
        }
    }
    return FeatureSet(features: features, labels: labels, width: d, classes: folder.classes)
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

    public init(checkpoint: URL, data: URL, out: URL) {
        self.checkpoint = checkpoint; self.data = data; self.out = out
    }
}

/// Loads the checkpoint as a backbone, extracts features of every image of the ImageFolder and
/// writes `features` (F32 [N, D]) and `labels` (I64 [N]) as safetensors with provenance metadata.
/// Returns the checkpoint's load notes.
@discardableResult
public func runExtract(_ o: ExtractOptions) throws -> [String] {
    guard (0.05...1).contains(o.cropRatio) else { throw TaskError.badArgument("--crop-ratio must be in (0, 1]") }
    guard o.batchSize > 0 else { throw TaskError.badArgument("--batch-size must be positive") }
    let loaded = try loadVisionTransformer(from: o.checkpoint, options: LoadOptions(heads: o.heads, imgSize: o.imgSize))
    let folder = try ImageFolder(root: o.data)
    let set = try extractFeatures(model: loaded.model, folder: folder, pooling: o.pooling,
                                  cropRatio: o.cropRatio, batchSize: o.batchSize)
    let meta = ["checkpoint": o.checkpoint.path, "data": o.data.path, "pool": o.pooling.rawValue,
                "img_size": "\(loaded.model.config.imgSize)", "crop_ratio": "\(o.cropRatio)",
                "classes": String(decoding: try JSONEncoder().encode(set.classes), as: UTF8.self)]
    try SafeTensors(tensors: [("features", StoredTensor(shape: [set.count, set.width], floats: set.features)),
                              ("labels", StoredTensor(shape: [set.count], int64s: set.labels.map(Int64.init)))],
                    metadata: meta).write(to: o.out)
    return loaded.notes
}
