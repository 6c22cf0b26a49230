import ArgumentParser
import Foundation
import MAETasks

struct Visualize: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw MAE reconstructions as a PNG grid (MAE's Figure 2).",
        discussion: """
            One row per image: the original, the masked input (removed patches grey), the reconstruction, \
            and the reconstruction with the visible patches pasted back. Predictions of a norm_pix_loss \
            model are de-normalised with each target patch's own mean and variance. The checkpoint must \
            hold the MAE decoder. Images are spread over the dataset in ImageFolder order.
            """)

    @Option(help: "MAE checkpoint with its decoder.")
    var checkpoint = defaultMAECheckpoint
    @Option(help: "An ImageFolder (default: the Shapes val split).")
    var data: URL?
    @Option(help: "Where the Shapes dataset is generated and cached.")
    var shapesDir = defaultShapesRoot
    @Option(help: "Fraction of patches removed.")
    var maskRatio = 0.75
    @Option(help: "Rows (images).")
    var count = 8
    @Option(help: "Seed of the masking noise.")
    var seed: UInt64 = 0
    @Option(help: "Output PNG.")
    var out: URL
    @OptionGroup var compute: ModelRunFlags

    var options: VisualizeOptions {
        var o = VisualizeOptions(out: out)
        o.checkpoint = checkpoint
        o.data = data
        o.shapesRoot = shapesDir
        o.maskRatio = maskRatio
        o.count = count
        o.seed = seed
        o.imgSize = compute.imgSize
        o.threads = compute.threads
        o.precision = compute.precision
        return o
    }

    func call() throws -> [String] {
        let size = try runVisualize(options)
        return ["\(out.relativePath) (\(size.width)x\(size.height))"]
    }
}
