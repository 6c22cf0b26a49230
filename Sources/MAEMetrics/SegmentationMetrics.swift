// Semantic-segmentation metrics as mmseg defines them (intersect_and_union + total_area_to_metrics):
// per-class areas summed over the whole set, then IoU and Acc per class, NaN-skipping means.
import Foundation
import MAEJSON

/// mmseg's mIoU metric: accumulate label maps image by image, then `compute()`.
public struct SegmentationMetrics: Sendable {
    /// Label maps are 8- or 16-bit PNGs, so labels are 0...65535: at most 65536 classes (and the
    /// per-class counts, 32 bytes a class, are bounded before anything is allocated).
    public static let maxClasses = 65536
    /// The label values a PNG label map can hold, and so the ignore indices that can match one.
    public static let labelRange: ClosedRange<Int32> = 0...65535

    public let numClasses: Int
    /// Ground-truth value that marks unlabelled pixels (mmseg's default 255).
    public let ignoreIndex: Int32
    /// ADE20K's option: ground-truth 0 becomes 255 (ignored) and every other label is shifted down by 1.
    public let reduceZeroLabel: Bool
    /// Per-class pixel counts summed over all images so far [numClasses].
    public private(set) var areaIntersect: [Int64]
    public private(set) var areaUnion: [Int64]
    public private(set) var areaPrediction: [Int64]
    public private(set) var areaLabel: [Int64]

    public init(numClasses: Int, ignoreIndex: Int32 = 255, reduceZeroLabel: Bool = false) {
        precondition((1...Self.maxClasses).contains(numClasses), "numClasses must be in 1...\(Self.maxClasses)")
        self.numClasses = numClasses
        self.ignoreIndex = ignoreIndex
        self.reduceZeroLabel = reduceZeroLabel
        areaIntersect = [Int64](repeating: 0, count: numClasses)
        areaUnion = areaIntersect
        areaPrediction = areaIntersect
        areaLabel = areaIntersect
    }

    /// Adds one image (mmseg's intersect_and_union): `prediction` and `groundTruth` are [H * W] labels
    /// in the same pixel order. Values outside 0..<numClasses are not counted in any class (as torch.histc
    /// over [0, numClasses - 1] does), but such ground-truth pixels still count as labelled positions.
    /// - Throws: `PathError` naming `name` if the two maps differ in size.
    public mutating func add(prediction: [Int32], groundTruth: [Int32], name: String = "image") throws {
        guard prediction.count == groundTruth.count else {
            throw PathError(
                name,
                "the prediction has \(prediction.count) pixels but the ground truth has \(groundTruth.count)")
        }
        let c = Int32(numClasses)
        for (p, gt) in zip(prediction, groundTruth) {
            var label = gt
            if reduceZeroLabel {
                // mmseg: label[label == 0] = 255; label = label - 1; label[label == 254] = 255
                if label == 0 { label = 255 }
                label -= 1
                if label == 254 { label = 255 }
            }
            if label == ignoreIndex { continue }
            if p >= 0 && p < c { areaPrediction[Int(p)] += 1 }
            if label >= 0 && label < c {
                areaLabel[Int(label)] += 1
                if p == label { areaIntersect[Int(label)] += 1 }
            }
        }
        for k in 0..<numClasses { areaUnion[k] = areaPrediction[k] + areaLabel[k] - areaIntersect[k] }
    }

    /// mmseg's total_area_to_metrics + the summary: fractions per class, means in percent.
    public func compute() -> SegmentationResult {
        let iou = (0..<numClasses).map { Double(areaIntersect[$0]) / Double(areaUnion[$0]) }
        let acc = (0..<numClasses).map { Double(areaIntersect[$0]) / Double(areaLabel[$0]) }
        let allAcc = Double(areaIntersect.reduce(0, +)) / Double(areaLabel.reduce(0, +))
        return SegmentationResult(iou: iou, acc: acc, mIoU: nanMean(iou) * 100, mAcc: nanMean(acc) * 100,
                                  aAcc: allAcc * 100)
    }
}

/// The metrics of a set of label maps. NaN marks classes for which a value is undefined.
public struct SegmentationResult: Sendable {
    /// Per-class intersection / union (fraction); NaN for classes absent from both prediction and truth.
    public var iou: [Double]
    /// Per-class intersection / truth area (fraction); NaN for classes absent from the truth.
    public var acc: [Double]
    /// Mean of the defined IoUs, in percent (NaN if none is defined).
    public var mIoU: Double
    /// Mean of the defined Accs, in percent.
    public var mAcc: Double
    /// Correct pixels over labelled pixels, in percent.
    public var aAcc: Double

    /// `{"mIoU", "mAcc", "aAcc"}` in percent and per-class `IoU`/`Acc` in percent, null where undefined.
    public func jsonValue() -> JSONValue {
        func number(_ v: Double) -> JSONValue { v.isNaN ? .null : .double(v) }
        // Keys in sorted order, as this file has always been written.
        return .object(["Acc": .array(acc.map { number($0 * 100) }), "IoU": .array(iou.map { number($0 * 100) }),
                        "aAcc": number(aAcc), "mAcc": number(mAcc), "mIoU": number(mIoU)])
    }

    /// mmseg's printed table: per class IoU and Acc, then the summary, in percent with 2 decimals.
    public func tableLines(classNames: [String]? = nil) -> [String] {
        func cell(_ v: Double) -> String { v.isNaN ? "nan" : String(format: "%.2f", v) }
        var lines = ["class      IoU      Acc"]
        for k in iou.indices {
            let name = classNames.flatMap { k < $0.count ? $0[k] : nil } ?? String(k)
            lines.append(name.padding(toLength: max(8, name.count), withPad: " ", startingAt: 0)
                         + " " + cell(iou[k] * 100).leftPadded(7) + "  " + cell(acc[k] * 100).leftPadded(7))
        }
        lines.append("aAcc " + cell(aAcc) + "  mIoU " + cell(mIoU) + "  mAcc " + cell(mAcc))
        return lines
    }
}

extension String {
    fileprivate func leftPadded(_ width: Int) -> String {
        count >= width ? self : String(repeating: " ", count: width - count) + self
    }
}

/// numpy's nanmean: the mean of the non-NaN values, NaN if there are none.
func nanMean(_ values: [Double]) -> Double {
    let kept = values.filter { !$0.isNaN }
    return kept.isEmpty ? .nan : pairwiseSum(kept[...]) / Double(kept.count)
}

// MARK: - Directories of label maps

extension SegmentationMetrics {
    /// What is wrong with a class count or ignore index (flag-named, for `seg-eval`), or nil.
    public static func problem(numClasses: Int, ignoreIndex: Int32) -> String? {
        guard numClasses > 0 else { return "--num-classes must be positive, not \(numClasses)" }
        guard numClasses <= maxClasses else {
            return "--num-classes \(numClasses) exceeds \(maxClasses): label maps are 8- or 16-bit PNGs, whose labels are 0...65535"
        }
        guard labelRange.contains(ignoreIndex) else {
            return "--ignore-index \(ignoreIndex) is not a label a PNG label map can hold (0...65535), so it would ignore nothing"
        }
        return nil
    }

    /// Scores every `.png` label map in `groundTruth` against the file of the same name in
    /// `predictions` (the whole of `mae-eval seg-eval`). `readLabelMap` decodes one PNG into row-major
    /// labels; it is passed in so that this target needs no image codec.
    /// - Returns: the metrics and the number of image pairs scored.
    /// - Throws: `PathError` naming the folder or file: a missing folder, no PNGs, a
    ///   missing prediction, or a prediction whose size differs from its ground truth.
    public static func evaluateDirectories(
        groundTruth: URL, predictions: URL, numClasses: Int, ignoreIndex: Int32 = 255, reduceZeroLabel: Bool = false,
        readLabelMap: (URL) throws -> (width: Int, height: Int, labels: [Int32])
    ) throws -> (result: SegmentationResult, images: Int) {
        if let problem = SegmentationMetrics.problem(numClasses: numClasses, ignoreIndex: ignoreIndex) {
            throw PathError(groundTruth.path, problem)
        }
        let fm = FileManager.default
        let names: [String]
        do {
            names = try fm.contentsOfDirectory(atPath: groundTruth.path)
                .filter { $0.lowercased().hasSuffix(".png") }.sorted()
        } catch {
            throw PathError(groundTruth.path, "is not a readable folder")
        }
        guard !names.isEmpty else {
            throw PathError(groundTruth.path, "holds no .png label maps")
        }
        var isFolder: ObjCBool = false
        guard fm.fileExists(atPath: predictions.path, isDirectory: &isFolder), isFolder.boolValue else {
            throw PathError(predictions.path, "is not a readable folder")
        }
        var metrics = SegmentationMetrics(numClasses: numClasses, ignoreIndex: ignoreIndex,
                                          reduceZeroLabel: reduceZeroLabel)
        for name in names {
            let gtURL = groundTruth.appendingPathComponent(name), predURL = predictions.appendingPathComponent(name)
            guard fm.fileExists(atPath: predURL.path) else {
                throw PathError(predURL.path,
                                               "is missing (every ground-truth map needs a prediction of the same name)")
            }
            let gt = try readLabelMap(gtURL), pred = try readLabelMap(predURL)
            guard gt.width == pred.width && gt.height == pred.height else {
                throw PathError(
                    predURL.path,
                    "is \(pred.width)x\(pred.height) but its ground truth \(gtURL.path) is \(gt.width)x\(gt.height)")
            }
            try metrics.add(prediction: pred.labels, groundTruth: gt.labels, name: predURL.path)
        }
        return (metrics.compute(), names.count)
    }
}
