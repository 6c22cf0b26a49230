import Foundation
import MAEData
import MAEFormats
import MAEMetrics

/// `per_image.json` of a run folder: one entry per validation image, in the protocol's val order,
/// written before `metrics.json` (so a run with metrics always has it). The paired bootstrap of the
/// transfer report resamples these images.
///
/// - `kind: "classification"`: `images` are ImageFolder paths relative to the val root, `correct`
///   is 1 for a top-1 hit, else 0; the statistic is top-1 in percent.
/// - `kind: "segmentation"`: `images` are label-map stems; `intersect`, `union`, `pred_area` and
///   `label_area` are each image's per-class pixel counts [images][classes] as mmseg's
///   `intersect_and_union` returns them; the statistics are mIoU, mAcc and aAcc in percent from the
///   summed counts (classes with no pixels in the summed union are left out, as mmseg's nanmean).
/// - `kind: "detection"`: `images` are COCO image ids as text, `ground_truth` the COCO instances
///   file they were scored against; the statistic (`DetectionStatistic`) re-runs COCO eval on the
///   resampled images from the run folder's `detections.json` and that file.
public struct PerImageResults: Codable, Sendable, Equatable {
    public static let fileName = "per_image.json"
    public static let currentFormat = "mae-eval per-image 1"

    public var format = PerImageResults.currentFormat
    public var kind: String
    public var images: [String]
    public var correct: [Int]?
    public var intersect: [[Double]]?
    public var union: [[Double]]?
    public var predArea: [[Double]]?
    public var labelArea: [[Double]]?
    /// Detection: the ground-truth COCO instances file (absolute path).
    public var groundTruth: String?

    enum CodingKeys: String, CodingKey {
        case format, kind, images, correct, intersect, union, predArea = "pred_area", labelArea = "label_area"
        case groundTruth = "ground_truth"
    }

    public init(kind: String, images: [String]) {
        self.kind = kind
        self.images = images
    }

    /// A classifier's per-image top-1 hits over `folder` (its samples' order).
    public init(classification folder: ImageFolder, hits: [Bool]) throws {
        guard hits.count == folder.count else {
            throw TaskError.badArgument("internal check failed: \(hits.count) per-image results for the \(folder.count) images of \(folder.root.path)")
        }
        let prefix = folder.root.standardizedFileURL.path + "/"
        self.init(kind: "classification", images: folder.samples.map { sample in
            let path = sample.url.standardizedFileURL.path
            return path.hasPrefix(prefix) ? String(path.dropFirst(prefix.count)) : sample.url.lastPathComponent
        })
        correct = hits.map { $0 ? 1 : 0 }
    }

    /// A segmenter's per-image areas (one `SegmentationMetrics` holding one image each) by label-map stem.
    public init(segmentation stems: [String], areas: [SegmentationMetrics]) {
        self.init(kind: "segmentation", images: stems)
        func rows(_ column: (SegmentationMetrics) -> [Int64]) -> [[Double]] { areas.map { column($0).map(Double.init) } }
        intersect = rows(\.areaIntersect)
        union = rows(\.areaUnion)
        predArea = rows(\.areaPrediction)
        labelArea = rows(\.areaLabel)
    }

    /// A detector's val images (COCO ids, in val order), scored against `groundTruth`.
    public init(detection imageIds: [Int], groundTruth: URL) {
        self.init(kind: "detection", images: imageIds.map(String.init))
        self.groundTruth = groundTruth.standardizedFileURL.path
    }

    /// Writes `per_image.json` into `dir` atomically.
    public func write(into dir: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try writeAtomically(try encoder.encode(self), to: dir.appendingPathComponent(Self.fileName))
    }

    /// Reads `dir/per_image.json`.
    /// - Throws: `TaskError` naming the file when it is missing, not this format, or inconsistent.
    public static func read(from dir: URL) throws -> PerImageResults {
        let url = dir.appendingPathComponent(fileName)
        guard let data = try? Data(contentsOf: url) else {
            throw TaskError.badArgument("\(url.path) is missing: the run predates per-image results, so its interval cannot be computed (rerun it)")
        }
        guard let results = try? JSONDecoder().decode(PerImageResults.self, from: data), results.format == currentFormat else {
            throw TaskError.badArgument("\(url.path) is not a per-image results file of format '\(currentFormat)'")
        }
        let n = results.images.count
        let columns = [results.correct?.count, results.intersect?.count, results.union?.count, results.predArea?.count,
                       results.labelArea?.count].compactMap { $0 }
        guard n > 0, columns.allSatisfy({ $0 == n }) else {
            throw TaskError.badArgument("\(url.path) has \(n) images but per-image arrays of other lengths \(columns)")
        }
        return results
    }
}
