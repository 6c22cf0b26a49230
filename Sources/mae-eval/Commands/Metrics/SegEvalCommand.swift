import ArgumentParser
import Foundation
import MAETasks

/// `mae-eval seg-eval`: semantic-segmentation mIoU of predicted label maps, as mmseg computes it.
struct SegEvalCommand: LibraryCommand {
    static let configuration = CommandConfiguration(
        commandName: "seg-eval",
        abstract: "Semantic-segmentation mIoU / mAcc / aAcc of PNG label maps, as mmseg computes them.",
        discussion: """
            Pairs every .png in --gt with the file of the same name in --pred (gray or palette PNGs; \
            palette PNGs give their palette indices). Intersections and unions are summed per class \
            over the whole set; classes with no union (IoU) or no ground truth (Acc) are left out of the \
            means. With --out writes {"mIoU", "mAcc", "aAcc"} in percent and per-class "IoU" and "Acc" in \
            percent, null where undefined.
            """)

    @Option(help: ArgumentHelp("Folder of ground-truth label maps.", valueName: "DIR"))
    var gt: URL

    @Option(help: ArgumentHelp("Folder of predicted label maps with the same file names.", valueName: "DIR"))
    var pred: URL

    @Option(name: .customLong("num-classes"), help: "Number of classes (labels 0..<N are scored; at most 65536, as label maps are 8- or 16-bit PNGs).")
    var numClasses: Int

    @Option(name: .customLong("ignore-index"), help: "Ground-truth label of unlabelled pixels (0...65535).")
    var ignoreIndex: Int32 = 255

    @Flag(name: .customLong("reduce-zero-label"),
          help: "ADE20K style: ground-truth 0 is ignored and every other label is shifted down by one.")
    var reduceZeroLabel = false

    @Option(help: ArgumentHelp("Write the metrics as JSON to this file.", valueName: "FILE.json"))
    var out: URL?

    var options: SegEvalOptions {
        var o = SegEvalOptions(groundTruth: gt, predictions: pred, numClasses: numClasses)
        o.ignoreIndex = ignoreIndex
        o.reduceZeroLabel = reduceZeroLabel
        o.out = out
        return o
    }

    func validate() throws {
        if let problem = options.problem { throw ValidationError(problem + ".") }
    }

    func call() throws -> [String] { try runSegEval(options) }
}
