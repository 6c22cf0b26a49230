import ArgumentParser
import MAEKernels
import MAETasks

/// `--img-size`, `--threads` and `--precision`, on every command that runs a model from a checkpoint,
/// `segment` and `detect` included (`pretrain` and `bench` have their own `--threads` beside their own
/// model flags; `bench` its own `--precision`).
struct ModelRunFlags: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Model input size in pixels, instead of the task's dataset.img_size (extract, visualize: the checkpoint's; segment: the training crop, with --eval-only the test size; detect: the padded square side); pos_embed is resized bicubically.",
        valueName: "N"))
    var imgSize: Int?
    @Option(name: .long, help: ArgumentHelp("Compute threads (default: every core; at most 4 per core).", valueName: "N"))
    var threads: Int?
    @Option(name: .long, help: ArgumentHelp(
        "Arithmetic of the matrix products: fp32, or bf16 inputs with fp32 accumulation as torch.autocast on CPU (our AVX512-BF16 kernel, or oneDNN on AMX); norms, softmax, losses and weights stay fp32. In segment and detect the ViT backbone's linear layers run in bf16 while the neck's and heads' convolutions stay fp32. A bf16 run is its own variant (run folder and report section).",
        valueName: "fp32|bf16"))
    var precision = Precision.fp32
}
