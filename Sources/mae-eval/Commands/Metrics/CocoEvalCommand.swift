import ArgumentParser
import Foundation
import MAETasks

/// `mae-eval coco-eval`: COCO box or mask AP of a results file, as pycocotools' COCOeval.
struct CocoEvalCommand: LibraryCommand {
    static let configuration = CommandConfiguration(
        commandName: "coco-eval",
        abstract: "COCO detection / instance-segmentation AP, equal to pycocotools' COCOeval.",
        discussion: """
            Reads a COCO instances file and a COCO results file (a list of {image_id, category_id, \
            score, bbox [x, y, w, h] and/or segmentation as RLE or polygons}), prints the 12 summary \
            lines exactly as pycocotools' summarize() does, and with --out writes \
            {"iou_type": ..., "stats": [12 numbers]} (-1 where there is no ground truth).
            """)

    @Option(help: ArgumentHelp("Ground-truth COCO instances JSON.", valueName: "GT.json"))
    var gt: URL

    @Option(help: ArgumentHelp("Detections in the COCO results format.", valueName: "DETECTIONS.json"))
    var dt: URL

    @Option(name: .customLong("iou-type"), help: "What IoU is computed on: bbox or segm.")
    var iouType: IoUType

    @Option(help: ArgumentHelp("Write the 12 stats as JSON to this file.", valueName: "FILE.json"))
    var out: URL?

    var options: CocoEvalOptions { CocoEvalOptions(groundTruth: gt, detections: dt, iouType: iouType, out: out) }

    func call() throws -> [String] { try runCocoEval(options) }
}
