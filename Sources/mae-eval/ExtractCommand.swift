import ArgumentParser
import Foundation
import MAEFormats
import MAEModels
import MAETasks

struct Extract: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write a frozen backbone's features of an ImageFolder to safetensors.",
        discussion: """
            Writes `features` (F32 [N, D]) and `labels` (I64 [N]) in ImageFolder order (classes and \
            files sorted by name). --pool cls is the cls token after the final norm (MAE's linear-probe \
            feature); --pool avg the mean of the patch tokens after it. Images go through MAE's eval \
            transform: the short side resized to size / crop-ratio (bicubic), then a center crop; with \
            --crop-ratio 1 an image already at the input size goes in unchanged.
            """)

    @Option(help: "Checkpoint: safetensors or a PyTorch .pth (MAE, timm, DeiT layouts).")
    var checkpoint: String
    @Option(help: "ImageFolder: one sub-folder of PNG/JPEG images per class.")
    var data: String
    @Option(help: "Output safetensors file.")
    var out: String
    @Option(help: "cls | avg.")
    var pool: String = "cls"
    @OptionGroup var compute: ModelRunFlags
    @Option(help: "Center-crop ratio of the eval transform.")
    var cropRatio = 0.875
    @Option(help: "Attention heads, when the checkpoint does not say and matches no preset.")
    var heads: Int?
    @Option(help: "Images per forward pass.")
    var batchSize = 64

    func run() throws {
        guard let pooling = Pooling(rawValue: pool) else {
            throw ValidationError("--pool must be cls or avg, not '\(pool)'.")
        }
        var o = ExtractOptions(checkpoint: URL(fileURLWithPath: checkpoint), data: URL(fileURLWithPath: data),
                               out: URL(fileURLWithPath: out))
        o.pooling = pooling
        o.imgSize = compute.imgSize
        o.threads = compute.threads
        o.cropRatio = cropRatio
        o.heads = heads
        o.batchSize = batchSize
        try runCLI { try runExtract(o) }
        print(out)
    }
}
