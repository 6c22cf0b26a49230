import ArgumentParser
import Foundation
import MAEFormats
import MAEModels
import MAETasks

struct Extract: LibraryCommand {
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
    var checkpoint: URL
    @Option(help: "ImageFolder: one sub-folder of PNG/JPEG images per class.")
    var data: URL
    @Option(help: "Output safetensors file.")
    var out: URL
    @Option(help: "Pooled feature: the cls token or the mean of the patch tokens.")
    var pool = Pooling.cls
    @OptionGroup var compute: ModelRunFlags
    @Option(help: "Center-crop ratio of the eval transform.")
    var cropRatio = 0.875
    @Option(help: "Attention heads, when the checkpoint does not say and matches no preset.")
    var heads: Int?
    @Option(help: "Images per forward pass.")
    var batchSize = 64

    var options: ExtractOptions {
        var o = ExtractOptions(checkpoint: checkpoint, data: data, out: out)
        o.pooling = pool
        o.imgSize = compute.imgSize
        o.threads = compute.threads
        o.precision = compute.precision
        o.cropRatio = cropRatio
        o.heads = heads
        o.batchSize = batchSize
        return o
    }

    func call() throws -> [String] {
        try runExtract(options)
        return [out.relativePath]
    }
}
