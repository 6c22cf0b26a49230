// `mae-eval coco-eval` and `seg-eval`: score files written elsewhere (detections, label maps) with
// MAEMetrics, reading label maps through MAEData's one PNG decoder.
import Foundation
import MAEData
import MAEFormats
import MAEJSON
import MAEMetrics

/// What IoU COCO AP is computed on (`--iou-type`): boxes or masks.
public typealias IoUType = COCOIoUType

/// `mae-eval coco-eval`: a COCO instances file, a COCO results file, and where the stats go.
public struct CocoEvalOptions: Sendable {
    /// Ground-truth COCO instances JSON (`--gt`).
    public var groundTruth: URL
    /// Detections in the COCO results format (`--dt`).
    public var detections: URL
    public var iouType: IoUType
    /// `--out`: {"iou_type": ..., "stats": [12 numbers]}; nil: printed only.
    public var out: URL?

    public init(groundTruth: URL, detections: URL, iouType: IoUType, out: URL? = nil) {
        self.groundTruth = groundTruth; self.detections = detections; self.iouType = iouType; self.out = out
    }
}

/// Scores the detections as pycocotools' COCOeval does, writes `--out` when asked, and returns the 12
/// summary lines exactly as pycocotools' summarize() prints them.
public func runCocoEval(_ o: CocoEvalOptions) throws -> [String] {
    if let out = o.out {
        try checkOutputFile(out, flag: "--out", inputs: [("--gt", o.groundTruth), ("--dt", o.detections)])
    }
    let result = try COCOEvaluator.evaluateFiles(groundTruth: o.groundTruth, detections: o.detections, iouType: o.iouType)
    if let out = o.out { try writeOutputLine(result.jsonValue().serialized(), to: out) }
    return result.summaryLines
}

/// `mae-eval seg-eval`: two folders of PNG label maps paired by file name, mmseg's options, and where
/// the metrics go.
public struct SegEvalOptions: Sendable {
    /// Folder of ground-truth label maps (`--gt`).
    public var groundTruth: URL
    /// Folder of predicted label maps with the same file names (`--pred`).
    public var predictions: URL
    public var numClasses: Int
    /// Ground-truth label of unlabelled pixels (mmseg's 255).
    public var ignoreIndex: Int32 = 255
    /// ADE20K style: ground-truth 0 ignored, every other label shifted down by one.
    public var reduceZeroLabel = false
    /// `--out`: mIoU, mAcc, aAcc and per-class IoU and Acc in percent; nil: printed only.
    public var out: URL?

    public init(groundTruth: URL, predictions: URL, numClasses: Int) {
        self.groundTruth = groundTruth; self.predictions = predictions; self.numClasses = numClasses
    }

    /// What is wrong with the class count or ignore index, flag-named, or nil (checked before any file is read).
    public var problem: String? { SegmentationMetrics.problem(numClasses: numClasses, ignoreIndex: ignoreIndex) }
}

/// Scores every ground-truth label map against its prediction as mmseg does, writes `--out` when asked,
/// and returns the lines to print: the number of maps, then the per-class table and the means.
public func runSegEval(_ o: SegEvalOptions) throws -> [String] {
    if let out = o.out {
        // The label maps read are inputs: --out is never one of them.
        let inputs = [("--gt", o.groundTruth), ("--pred", o.predictions)].flatMap { flag, dir in
            ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).map {
                (flag: flag, url: dir.appendingPathComponent($0))
            }
        }
        try checkOutputFile(out, flag: "--out", inputs: inputs)
    }
    let (result, images) = try SegmentationMetrics.evaluateDirectories(
        groundTruth: o.groundTruth, predictions: o.predictions, numClasses: o.numClasses,
        ignoreIndex: o.ignoreIndex, reduceZeroLabel: o.reduceZeroLabel, readLabelMap: readScoredLabelMap)
    if let out = o.out { try writeOutputLine(result.jsonValue().serialized(), to: out) }
    return ["\(images) label maps"] + result.tableLines()
}

/// One label map by MAEData's decoder, its failures as the metrics' one-sentence error naming the file.
func readScoredLabelMap(_ url: URL) throws -> (width: Int, height: Int, labels: [Int32]) {
    do {
        let map = try LabelMapCodec.read(contentsOf: url)
        return (map.width, map.height, map.labels)
    } catch var error as PathError {
        error.period = true  // the metrics' sentences end with a period
        throw error
    }
}

/// Writes `text` and a newline to a command's `--out` file, by `writeAtomically`'s rule (a FIFO or
/// `/dev/stdout` is written through, a regular file replaced whole).
func writeOutputLine(_ text: String, to url: URL) throws {
    try writeAtomically(Data((text + "\n").utf8), to: url)
}
