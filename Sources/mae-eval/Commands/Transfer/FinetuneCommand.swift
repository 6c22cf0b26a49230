import ArgumentParser
import Foundation
import MAETasks

struct Finetune: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Full or partial fine-tuning (MAE's main_finetune.py recipe).",
        discussion: """
            Global average pooling + fc_norm + a new head (trunc-normal std 2e-5), AdamW with layer-wise lr decay, \
            drop path, mixup/cutmix with label smoothing, RandomResizedCrop + flip, warmup + cosine; lr = blr * \
            batch / 256. --blocks N trains only the last N blocks, fc_norm and the head (paper Fig. 9). The run \
            folder's checkpoint.safetensors (weights, AdamW state, loop position) is rewritten every epoch \
            (and every --checkpoint-every steps); --resume continues it, bit-identically to an unbroken run. With no arguments: the shipped MAE and supervised checkpoints on Tasks/shapes-finetune.yaml.
            """)

    @OptionGroup var flags: TransferFlags
    @OptionGroup var compute: ModelRunFlags
    @Option(help: "Fine-tune only the last N blocks (+ fc_norm + head).")
    var blocks: Int?
    @Option(help: "Images per step (default: the task's).")
    var batchSize: Int?
    @Flag(help: "Continue each run folder's checkpoint instead of starting afresh.")
    var resume = false
    @Option(help: "Also write each run's checkpoint every N steps within an epoch (default: at epoch ends only).")
    var checkpointEvery: Int?

    var options: FineTuneOptions {
        get throws {
            var o = FineTuneOptions()
            o.common = try flags.options(compute)
            o.blocks = blocks
            o.batchSize = batchSize
            o.resume = resume
            o.checkpointEvery = checkpointEvery
            return o
        }
    }

    func call() throws -> [String] {
        let o = try options
        return try runAndReport(o.common) { try runFineTune(o) }.map(\.dir.path)
    }
}
