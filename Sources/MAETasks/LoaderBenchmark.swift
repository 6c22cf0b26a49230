import Foundation
import MAEData
import MAEJSON

/// Which transform `mae-eval data loader-bench` times.
public enum LoaderBenchMode: String, CaseIterable, Sendable {
    /// RandomResizedCrop(0.2, 1) + flip, MAE's pretraining transform.
    case train
    /// Resize + center crop (ratio 0.875), the eval transform.
    case eval
}

/// `mae-eval data loader-bench`: one epoch of an ImageFolder through the loader.
public struct LoaderBenchOptions: Sendable {
    /// An ImageFolder dataset.
    public var data: URL
    /// Output side in pixels.
    public var size = 224
    public var mode = LoaderBenchMode.train
    /// Background decoding threads.
    public var workers = 2
    public var batchSize = 32

    public init(data: URL) { self.data = data }
}

/// Decodes, augments and normalises every image of `o.data` once and returns the one JSON line
/// `{"img_per_s":…,"images":…,"size":…,"mode":…,"workers":…}` (img_per_s to 0.1).
public func runLoaderBench(_ o: LoaderBenchOptions) throws -> String {
    let folder = try ImageFolder(root: o.data)
    let transform: MAETransform = o.mode == .eval
        ? .eval(size: o.size, cropRatio: 0.875) : .train(RandomResizedCrop(size: o.size, scale: 0.2...1))
    let loader = DataLoader(source: folder, transform: transform, batchSize: o.batchSize, workers: o.workers)
    let start = Date()
    var images = 0
    let it = loader.epoch(0)
    while let batch = try it.next() { images += batch.count }
    let seconds = Date().timeIntervalSince(start)
    let line: JSONObject = [
        "img_per_s": .double((Double(images) / seconds * 10).rounded() / 10),
        "images": .int(images), "size": .int(o.size), "mode": .string(o.mode.rawValue), "workers": .int(o.workers),
    ]
    return JSONValue.object(line).serialized()
}
