import ArgumentParser
import Foundation
import MAEFormats
import MAEModels
import MAETasks

struct Linprobe: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Linear probing of frozen backbones (MAE's protocol, or a fast cached grid).",
        discussion: """
            With no arguments: the shipped MAE and supervised Shapes checkpoints on Tasks/shapes-linprobe.yaml \
            (Shapes is generated under the installation's .mae-eval/data/shapes when missing), then \
            ./Reports/classification.md. The installation (Tasks/, Checkpoints/, .mae-eval/) is found as \
            mae-eval --help says, so this runs from any folder; runs/ and Reports/ go to the current folder.

            --mode cached (the task's default) extracts eval-transform features once (cached under \
            the installation's .mae-eval/cache/features, or MAE_EVAL_CACHE/features, by checkpoint content, data, transform and feature), standardises them with \
            train statistics, trains one linear head per (lr, weight decay) of the task's grid at once, picks the \
            best on a stratified held-out part of train, retrains it on all of train and reports val top-1/top-5.

            --mode augmented is MAE's main_linprobe.py: the frozen backbone in eval mode sees RandomResizedCrop + \
            flip images every epoch; BatchNorm1d without affine + Linear (trunc-normal std 0.01) trained by LARS, \
            lr = blr * batch / 256, warmup + cosine; val through resize + center crop.

            --shots K / --label-fraction F make it a low-shot probe (cached mode): the cached train features \
            are cut to K images per class or a class-balanced fraction F, drawn per class with the run's seed \
            (the same images for every backbone), before selection and the refit; val is whole.

            Each run writes metrics.json and log.jsonl into runs/<task>/<variant>/<backbone>-s<seed>/ and prints \
            that folder.
            """)

    @OptionGroup var flags: TransferFlags
    @OptionGroup var compute: ModelRunFlags
    @Option(help: "How the head is trained (default: the task's).")
    var mode: LinearProbeMode?
    @Option(help: "Pooled feature: the cls token or the mean of the patch tokens (default: the task's). A global-pool checkpoint without a final norm always gives avg + fc_norm.")
    var pool: Pooling?
    @Option(help: "Concatenate the pooled features of the last k blocks.")
    var lastBlocks: Int?
    @Flag(help: "--mode augmented: continue each run folder's checkpoint instead of starting afresh.")
    var resume = false
    @Option(help: "--mode augmented: also checkpoint every N steps within an epoch (default: at epoch ends only).")
    var checkpointEvery: Int?
    @Option(help: "Low-shot probe (--mode cached): keep K training images per class, drawn class by class with the run's seed.")
    var shots: Int?
    @Option(help: "Low-shot probe (--mode cached): keep a class-balanced fraction F of the training images (round(F x n) per class, at least one), seeded.")
    var labelFraction: Double?

    var options: LinearProbeOptions {
        get throws {
            var o = LinearProbeOptions()
            o.common = try flags.options(compute)
            o.mode = mode
            o.pooling = pool
            o.lastBlocks = lastBlocks
            o.resume = resume
            o.checkpointEvery = checkpointEvery
            o.shots = shots
            o.labelFraction = labelFraction
            return o
        }
    }

    func call() throws -> [String] {
        let o = try options
        return try runAndReport(o.common) { try runLinearProbe(o) }.map(\.dir.path)
    }
}
