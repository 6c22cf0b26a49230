import ArgumentParser
import MAETasks

/// `--img-size` and `--threads`, on every command that runs a model (`pretrain` and `bench` have their own
/// `--threads` beside their own model flags).
struct ModelRunFlags: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Model input size in pixels, instead of the task's dataset.img_size (extract, visualize: the checkpoint's); pos_embed is resized bicubically.",
        valueName: "N"))
    var imgSize: Int?
    @Option(name: .long, help: ArgumentHelp("Compute threads (default: every core; at most 4 per core).", valueName: "N"))
    var threads: Int?
}
