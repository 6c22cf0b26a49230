import ArgumentParser
import Foundation
import MAETasks

struct Segment: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Semantic segmentation transfer: mmseg's MAE UperNet, or DINOv2's linear head on a frozen backbone.",
        discussion: """
            UperNet (--head upernet): the ViT as mmseg's MAE backbone (blocks depth x (4, 6, 8, 12) / 12 - 1), \
            Feature2Pyramid, UPerHead with PPM (1, 2, 3, 6), the FCN auxiliary head (loss weight 0.4), AdamW with \
            mmseg's layer decay, linear warmup + poly. The linear head (--head linear): frozen backbone in eval mode, \
            its final norm on the last block(s), BatchNorm + 1x1 conv. Training: mmseg's RandomResize (the task's ratio range; mmseg 0.5-2.0), \
            RandomCrop (cat_max_ratio 0.75), flip, PhotoMetricDistortion, pad 0 / 255. Each run folder holds \
            metrics.json (mIoU, mAcc, aAcc, per-class IoU / Acc), pred/STEM.png (the annotation's label space), \
            overlays/, log.jsonl, checkpoint.safetensors (resume) and segmenter.safetensors (mmseg's parameter names). \
            With no arguments: both heads on the Shapes scenes, the shipped MAE and supervised backbones, and \
            Reports/segmentation.md. --eval-only --weights W evaluates an mmseg-layout UperNet (safetensors or an \
            mmengine .pth) on --val-images / --val-labels.
            """)

    @Option(name: .long, help: "Backbone checkpoint (repeatable). Default: the shipped MAE checkpoint.")
    var checkpoint: [URL] = []
    @Option(name: .long, help: "Backbone the others are compared against. Default (with no --checkpoint): the shipped supervised checkpoint.")
    var baseline: URL?
    @Option(name: .long, help: "upernet or linear (default: the task's; with no task, both).")
    var head: String?
    @Option(name: .long, help: "Task spec: a YAML file or the name of one in Tasks/ (default shapes-segment / shapes-segment-linear).")
    var task: String?
    @Option(name: .long, help: "Training images folder (labels pair by file stem).")
    var trainImages: URL?
    @Option(name: .long, help: "Training label maps folder (PNG).")
    var trainLabels: URL?
    @Option(name: .long, help: "Validation images folder.")
    var valImages: URL?
    @Option(name: .long, help: "Validation label maps folder (PNG).")
    var valLabels: URL?
    @Option(name: .long, help: "Classes, instead of the task's.")
    var numClasses: Int?
    @Flag(name: .long, help: "ADE20K's convention: label 0 is ignored, the others shift down by one.")
    var reduceZeroLabel = false
    @Option(name: .long, help: "Epochs, instead of the task's.")
    var epochs: Int?
    @Option(name: .long, help: "Comma-separated seeds, instead of the task's.")
    var seeds: String?
    @Flag(name: .long, help: "Continue each run folder's checkpoint.")
    var resume = false
    @Option(name: .long, help: "Folder of the run folders (their segmentation/ sub-folder).")
    var outDir = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    @Option(name: .long, help: "Markdown report (default: Reports/segmentation.md for the default --out-dir, else OUT_DIR/segmentation.md).")
    var report: URL?
    @Flag(name: .long, help: "Do not write the report.")
    var noReport = false
    @Flag(name: .long, help: "Only evaluate --weights.")
    var evalOnly = false
    @Option(name: .long, help: "mmseg-layout segmenter to evaluate (safetensors or mmengine .pth).")
    var weights: URL?
    @Flag(name: .long, help: "Sliding-window inference (--eval-only).")
    var slide = false
    @Option(name: .long, help: "Attention heads, for weights that do not say and match no preset.")
    var heads: Int?
    @OptionGroup var compute: ModelRunFlags

    func call() throws -> [String] {
        var o = SegmentOptions()
        o.checkpoints = checkpoint
        o.baseline = baseline
        o.head = head
        o.task = task
        o.trainImages = trainImages; o.trainLabels = trainLabels; o.valImages = valImages; o.valLabels = valLabels
        o.numClasses = numClasses
        o.reduceZeroLabel = reduceZeroLabel
        o.imgSize = compute.imgSize
        o.epochs = epochs
        if let seeds { o.seeds = try TransferOptions.parseSeeds(seeds) }
        o.resume = resume
        o.outDir = outDir
        o.report = noReport || evalOnly ? nil : report ?? URL(fileURLWithPath: SegmentOptions.defaultReportPath(runs: outDir.relativePath))
        o.evalOnly = evalOnly
        o.weights = weights
        o.slide = slide
        o.heads = heads
        o.threads = compute.threads
        o.precision = compute.precision
        return try runSegment(o).map(\.dir.path)
    }
}
