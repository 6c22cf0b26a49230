import ArgumentParser
import Foundation
import MAEFormats
import MAEMetrics

/// `mae-eval coco-eval`: COCO box or mask AP of a results file, as pycocotools' COCOeval.
struct CocoEvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coco-eval",
        abstract: "COCO detection / instance-segmentation AP, equal to pycocotools' COCOeval.",
        discussion: """
            Reads a COCO instances file and a COCO results file (a list of {image_id, category_id, \
            score, bbox [x, y, w, h] and/or segmentation as RLE or polygons}), prints the 12 summary \
            lines exactly as pycocotools' summarize() does, and with --out writes \
            {"iou_type": ..., "stats": [12 numbers]} (-1 where there is no ground truth).
            """)

    enum IoUType: String, ExpressibleByArgument, CaseIterable {
        case bbox, segm
    }

    @Option(help: ArgumentHelp("Ground-truth COCO instances JSON.", valueName: "GT.json"))
    var gt: String

    @Option(help: ArgumentHelp("Detections in the COCO results format.", valueName: "DETECTIONS.json"))
    var dt: String

    @Option(name: .customLong("iou-type"), help: "What IoU is computed on: bbox or segm.")
    var iouType: IoUType

    @Option(help: ArgumentHelp("Write the 12 stats as JSON to this file.", valueName: "FILE.json"))
    var out: String?

    func run() throws {
        try runCLI {
            if let out {
                try checkOutputFile(URL(fileURLWithPath: out), flag: "--out",
                                    inputs: [("--gt", URL(fileURLWithPath: gt)), ("--dt", URL(fileURLWithPath: dt))])
            }
            let result = try COCOEvaluator.evaluateFiles(
                groundTruth: URL(fileURLWithPath: gt), detections: URL(fileURLWithPath: dt),
                iouType: iouType == .bbox ? .bbox : .segm)
            print(result.summaryLines.joined(separator: "\n"))
            if let out { try writeOutputFile(result.jsonValue().serialized(), to: out) }
        }
    }
}
