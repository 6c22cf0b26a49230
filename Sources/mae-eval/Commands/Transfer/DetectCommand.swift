import ArgumentParser
import Foundation
import MAETasks

struct Detect: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Detection and instance segmentation transfer: Mask R-CNN on ViTDet's backbone and simple feature pyramid.",
        discussion: """
            Each backbone is adapted as ViTDet (window attention with evenly spaced global blocks, rel-pos, no cls \
            token) under detectron2's Mask R-CNN (RPN, 4conv1fc box head, mask head), trained with AdamW, layer-wise \
            lr decay, warmup + steps and large-scale jitter, then evaluated with COCO AP: each run folder holds \
            metrics.json (bbox and segm, the 12 COCO numbers), detections.json (COCO results), log.jsonl, figures/ \
            and the detector in detectron2's names (detector.safetensors). --eval-only --weights W evaluates a \
            detectron2 ViTDet Mask R-CNN (safetensors, torch.save state dict or model-zoo .pkl). With no arguments: \
            the shipped MAE and supervised checkpoints on Tasks/shapes-detect.yaml, and Reports/detection.md.
            """)

    @Option(name: .long, help: "Backbone checkpoint to evaluate (repeatable). Default: the shipped MAE checkpoint.")
    var checkpoint: [URL] = []
    @Option(name: .long, help: "Backbone the others are compared against. Default (with no --checkpoint): the shipped supervised checkpoint.")
    var baseline: URL?
    @Option(name: .long, help: "Detection task spec: a YAML file or the name of one in the installation's Tasks/ (default shapes-detect).")
    var task: String?
    @Option(name: .long, help: "Train COCO instances JSON, instead of the task's.")
    var trainData: URL?
    @Option(name: .long, help: "Folder of the train images.")
    var trainImages: URL?
    @Option(name: .long, help: "Val COCO instances JSON, instead of the task's.")
    var valData: URL?
    @Option(name: .long, help: "Folder of the val images.")
    var valImages: URL?
    @Option(name: .long, help: "Epochs, instead of the task's (the lr milestones scale with them).")
    var epochs: Int?
    @Option(name: .long, help: "One seed, instead of the task's.")
    var seed: UInt64?
    @Option(name: .long, help: "Comma-separated seeds (e.g. 0,1,2), instead of the task's.")
    var seeds: String?
    @Flag(help: "Continue each run folder's checkpoint instead of starting afresh.")
    var resume = false
    @Option(name: .long, help: "Folder of the run folders (relative to the current folder).")
    var outDir = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    @Flag(name: .long, help: "Evaluate --weights (a detectron2-layout detector) instead of training.")
    var evalOnly = false
    @Option(name: .long, help: "The detector --eval-only evaluates: safetensors, a torch.save state dict or a detectron2 model-zoo .pkl.")
    var weights: URL?
    @Option(name: .long, help: "Attention heads, for weights or checkpoints that do not say and match no preset.")
    var heads: Int?
    @OptionGroup var compute: ModelRunFlags

    var options: DetectOptions {
        get throws {
            var o = DetectOptions()
            o.checkpoints = checkpoint
            o.baseline = baseline
            o.task = task
            o.trainData = trainData; o.trainImages = trainImages; o.valData = valData; o.valImages = valImages
            o.imgSize = compute.imgSize
            o.epochs = epochs
            if let seeds { o.seeds = try TransferOptions.parseSeeds(seeds) }
            if let seed {
                guard seeds == nil else { throw ValidationError("pass --seed or --seeds, not both.") }
                o.seeds = [seed]
            }
            o.resume = resume
            o.outDir = outDir
            o.report = URL(fileURLWithPath: DetectOptions.defaultReportPath(runs: outDir.relativePath))
            o.evalOnly = evalOnly
            o.weights = weights
            o.heads = heads
            o.threads = compute.threads
            o.precision = compute.precision
            if evalOnly, !checkpoint.isEmpty || baseline != nil {
                throw ValidationError("--eval-only evaluates --weights; it takes no --checkpoint or --baseline.")
            }
            return o
        }
    }

    func call() throws -> [String] {
        try runDetect(try options).map(\.dir.path)
    }
}
