import ArgumentParser
import Foundation
import MAETasks

struct Pretrain: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Pretrain a ViT backbone by MAE or by supervised classification.",
        discussion: """
            mae: MAE's recipe (mask ratio 0.75 by argsort of noise, encoder on the visible patches, light \
            decoder, norm_pix_loss, AdamW (0.9, 0.95), lr = blr x batch / 256 with blr 1.5e-4, weight decay \
            0.05, warmup then cosine per step, RandomResizedCrop(0.2, 1) + flip, fixed sin-cos pos_embed). \
            supervised: the same ViT with global average pooling + fc_norm + a head, cross-entropy with label \
            smoothing 0.1, drop path 0.1, AdamW (0.9, 0.95), blr 1e-4, weight decay 0.3, \
            RandomResizedCrop(0.08, 1) + flip (MAE's supervised-from-scratch recipe, without mixup/cutmix). \
            Warmup defaults to the recipe's fraction of the epochs (MAE 40/800, supervised 20/300).

            Without --data, the Shapes dataset is generated into --shapes-dir (pretrain split for mae, \
            supervised split for supervised). Writes into --out-dir: log.jsonl (one JSON object per epoch), \
            checkpoint.safetensors at every epoch end (weights, optimizer state, epoch), backbone.safetensors, \
            metrics.json and loss.png at the end; --checkpoint-every N also checkpoints every N steps. --resume \
            continues from the last checkpoint (mid-epoch included); with the same flags and --threads the \
            result is bit-identical to an unbroken run, even after kill -9. A non-finite loss, or one above 1e4, \
            stops the run and keeps the last good checkpoint.
            """)

    @Option(help: "What the backbone learns from: MAE reconstruction or supervised classification.")
    var method: PretrainMethod
    @Option(help: "Model preset (vit_shapes_patch4, vit_tiny_patch16, vit_small_patch16, vit_base_patch16, ...).")
    var model = "vit_shapes_patch4"
    @Option(help: "An ImageFolder to train on (default: Shapes).")
    var data: URL?
    @Option(help: "Where the Shapes dataset is generated and cached.")
    var shapesDir = defaultShapesRoot
    @Option(help: "Epochs in the whole run (the schedule's length).")
    var epochs = 10
    @Option(help: "Images per step.")
    var batchSize = 64
    @Option(help: "Absolute learning rate (overrides --blr).")
    var lr: Double?
    @Option(help: "Base learning rate; lr = blr x batch size / 256 (default 1.5e-4 mae, 1e-4 supervised).")
    var blr: Double?
    @Option(help: "Learning rate at the end of the cosine.")
    var minLr = 0.0
    @Option(help: "Warmup epochs (fractional allowed).")
    var warmupEpochs: Double?
    @Option(help: "AdamW weight decay (default 0.05 mae, 0.3 supervised).")
    var weightDecay: Double?
    @Option(help: "Fraction of patches removed (mae).")
    var maskRatio = 0.75
    @Option(help: "Smallest crop area fraction of RandomResizedCrop (default 0.2 mae, 0.08 supervised).")
    var minCropScale: Double?
    @Option(help: "Stochastic depth rate (default 0 mae, 0.1 supervised).")
    var dropPath: Double?
    @Option(help: "Random seed (initialisation, data order, augmentation, masking).")
    var seed: UInt64 = 0
    @Option(help: "Run folder.")
    var outDir: URL
    @Flag(help: "Continue the run in --out-dir from its last complete epoch.")
    var resume = false
    @Option(help: "Compute threads (default: every core; at most 4 per core).")
    var threads: Int?
    @Option(help: "Background data-loading threads.")
    var workers = 1
    @Option(help: "Also write checkpoint.safetensors every N steps within an epoch (default: at epoch ends only).")
    var checkpointEvery: Int?
    @Option(help: ArgumentHelp("A custom encoder SIZE/PATCH/WIDTH/DEPTH/HEADS instead of --model's (tiny test models).",
                               visibility: .hidden))
    var architecture: String?
    @Option(help: ArgumentHelp("A custom MAE decoder WIDTH/DEPTH/HEADS (with --architecture).", visibility: .hidden))
    var decoderArchitecture: String?

    var options: PretrainOptions {
        get throws {
            var o = PretrainOptions(method: method, epochs: epochs, outDir: outDir)
            o.model = model
            o.data = data
            o.shapesRoot = shapesDir
            o.batchSize = batchSize
            o.lr = lr
            o.blr = blr
            o.minLR = minLr
            o.warmupEpochs = warmupEpochs
            o.weightDecay = weightDecay
            o.maskRatio = maskRatio
            o.dropPath = dropPath
            o.minCropScale = minCropScale
            o.seed = seed
            o.resume = resume
            o.workers = workers
            o.threads = threads
            o.checkpointEvery = checkpointEvery
            if let architecture { try o.setArchitecture(architecture, decoder: decoderArchitecture) }
            return o
        }
    }

    func call() throws -> [String] { [try runPretraining(options).outDir.path] }
}
