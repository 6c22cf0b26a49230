import Foundation
import MAECOCO

/// COCO box and mask AP of a detection run on a bootstrap resample of its val images: COCO eval
/// (MAEMetrics, pycocotools-exact) re-run over the multiset of drawn images.
///
/// Duplicates: pycocotools evaluates each image id once, so every drawn copy becomes a new image.
/// Copies are relabeled in val order: image n drawn c times gives c images with new ids (running
/// 1, 2, ... over all copies), each with image n's ground-truth annotations (new annotation ids,
/// running likewise) and image n's detections; an image not drawn contributes neither. All ones
/// relabels each image once, which scores exactly as the run itself.
public struct DetectionStatistic: PerImageStatistic {
    public var images: [String]
    public var groundTruth: COCODataset
    public var groundTruthFile: String
    /// Per val image (in `images` order): its ground truth and its detections.
    var truth: [[COCOAnnotation]], detections: [[COCODetection]]

    /// - Throws: `TaskError` naming the file when a val image is not in the ground truth or a
    ///   detection is of an image that is not a val image.
    public init(images: [String], groundTruth: COCODataset, groundTruthFile: String, detections all: [COCODetection]) throws {
        let ids = try images.map { text -> Int in
            guard let id = Int(text) else { throw TaskError.badArgument("per-image detection results name image '\(text)', not a COCO image id") }
            return id
        }
        let position = Dictionary(ids.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
        let known = Set(groundTruth.images.map(\.id))
        if let stray = ids.first(where: { !known.contains($0) }) {
            throw TaskError.badArgument("\(groundTruthFile) has no image \(stray), which the run's per-image results list")
        }
        var truth = [[COCOAnnotation]](repeating: [], count: ids.count)
        for a in groundTruth.annotations { if let n = position[a.imageId] { truth[n].append(a) } }
        var detections = [[COCODetection]](repeating: [], count: ids.count)
        for d in all {
            guard let n = position[d.imageId] else {
                throw TaskError.badArgument("a detection is of image \(d.imageId), which is not among the run's \(ids.count) val images")
            }
            detections[n].append(d)
        }
        self.images = images
        self.groundTruth = groundTruth
        self.groundTruthFile = groundTruthFile
        self.truth = truth
        self.detections = detections
    }

    /// The run folder's statistic: `detections.json` against `results.groundTruth`.
    public init(_ results: PerImageResults, run: URL) throws {
        guard let file = results.groundTruth else {
            throw TaskError.badArgument("\(run.path)/\(PerImageResults.fileName) is a detection file without `ground_truth`")
        }
        let gt = try COCODataset(contentsOf: URL(fileURLWithPath: file))
        try self.init(images: results.images, groundTruth: gt, groundTruthFile: file,
                      detections: try COCODetection.load(contentsOf: run.appendingPathComponent("detections.json")))
    }

    /// The resample as one COCO dataset and results, every drawn copy relabeled (see the type's doc).
    func multiset(counts: [Int]) -> (COCODataset, [COCODetection]) {
        var images: [COCOImage] = [], annotations: [COCOAnnotation] = [], results: [COCODetection] = []
        let original = Dictionary(groundTruth.images.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
        for n in counts.indices {
            for _ in 0..<counts[n] {
                var image = original[Int(self.images[n])!]!
                image.id = images.count + 1
                images.append(image)
                for var a in truth[n] {
                    a.id = annotations.count + 1
                    a.imageId = image.id
                    annotations.append(a)
                }
                results += detections[n].map { d in var d = d; d.imageId = image.id; return d }
            }
        }
        return (COCODataset(images: images, annotations: annotations, categories: groundTruth.categories), results)
    }

    /// APbox, APbox50, APbox75, APboxs/m/l and the same for APmask (percent; -100 for an area range
    /// without ground truth, as pycocotools' -1).
    public func values(counts: [Int]) -> [String: Double] {
        let (gt, results) = multiset(counts: counts)
        guard let (bbox, segm) = try? cocoMetrics(groundTruth: gt, results: results, groundTruthFile: groundTruthFile) else {
            return [:]
        }
        var values: [String: Double] = [:]
        for (prefix, stats) in [("APbox", bbox), ("APmask", segm)] {
            for (key, suffix) in [("AP", ""), ("AP50", "50"), ("AP75", "75"), ("APs", "s"), ("APm", "m"), ("APl", "l")] {
                values[prefix + suffix] = stats[key]
            }
        }
        return values
    }
}
