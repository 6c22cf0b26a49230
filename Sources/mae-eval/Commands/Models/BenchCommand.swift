import ArgumentParser
import Foundation
import MAEKernels
import MAETasks

struct Bench: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure images/s of a forward pass, a training step or an MAE pretraining step.",
        discussion: """
            Runs on random weights and inputs and prints one JSON line with img_per_s, model, mode, \
            batch_size, threads, precision and blas (library, version, kernel); with --precision bf16 also bf16 (the backend's library, version, ISA and kernel). Compare with PyTorch on the same cores (scripts/bench_pytorch.py).
            """)

    @Option(help: "Model preset: vit_tiny_patch16, vit_small_patch16, vit_base_patch16, vit_large_patch16, vit_huge_patch14, vit_shapes_patch4 (or ViT-B/16, base, ...); vitdet_b (ViTDet-B backbone + simple feature pyramid, forward only).")
    var model = "vit_base_patch16"
    @Option(help: "Input size in pixels; must be divisible by the patch size.")
    var imgSize = 224
    @Option(help: "Images per step.")
    var batchSize = 8
    @Option(help: "What one step is: a classifier forward, forward + backward + AdamW, or an MAE pretraining step.")
    var mode = BenchMode.forward
    @Option(help: "Fraction of patches removed in pretrain mode.")
    var maskRatio = 0.75
    @Option(help: "Timed iterations (after one warm-up).")
    var iters = 5
    @Option(help: "Compute threads (default: every core; at most 4 per core).")
    var threads: Int?
    @Option(help: ArgumentHelp("Arithmetic of the matrix products: fp32, or bf16 inputs with fp32 accumulation (torch.autocast on CPU).",
                               valueName: "fp32|bf16"))
    var precision = Precision.fp32
    @Flag(help: "Also report the share of time per kernel family.")
    var profile = false

    var options: BenchOptions {
        var o = BenchOptions(model: model, imgSize: imgSize, batchSize: batchSize, mode: mode,
                             maskRatio: maskRatio, iters: iters, profile: profile)
        o.threads = threads
        o.precision = precision
        return o
    }

    func call() throws -> [String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return [String(decoding: try encoder.encode(try runBenchmark(options)), as: UTF8.self)]
    }
}
