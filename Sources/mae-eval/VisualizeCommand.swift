import ArgumentParser
import Foundation
import MAETasks

struct Visualize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Draw MAE reconstructions as a PNG grid (MAE's Figure 2).",
        discussion: """
            One row per image: the original, the masked input (removed patches grey), the reconstruction, \
            and the reconstruction with the visible patches pasted back. Predictions of a norm_pix_loss \
            model are de-normalised with each target patch's own mean and variance. The checkpoint must \
            hold the MAE decoder. Images are spread over the dataset in ImageFolder order.
            """)

    @Option(help: "MAE checkpoint with its decoder.")
    var checkpoint = defaultMAECheckpoint.path
    @Option(help: "An ImageFolder (default: the Shapes val split).")
    var data: String?
    @Option(help: "Where the Shapes dataset is generated and cached.")
    var shapesDir = defaultShapesRoot.path
    @Option(help: "Fraction of patches removed.")
    var maskRatio = 0.75
    @Option(help: "Rows (images).")
    var count = 8
    @Option(help: "Seed of the masking noise.")
    var seed: UInt64 = 0
    @Option(help: "Output PNG.")
    var out: String
    @OptionGroup var compute: ModelRunFlags

    func run() throws {
        var o = VisualizeOptions(out: URL(fileURLWithPath: out))
        o.checkpoint = URL(fileURLWithPath: checkpoint)
        o.data = data.map { URL(fileURLWithPath: $0) }
        o.shapesRoot = URL(fileURLWithPath: shapesDir)
        o.maskRatio = maskRatio; o.count = count; o.seed = seed
        o.imgSize = compute.imgSize; o.threads = compute.threads
        let size = try runCLI { try runVisualize(o) }
        print("\(out) (\(size.width)x\(size.height))")
    }
}
