import ArgumentParser
import Foundation
import MAEFormats
import MAEModels
import MAETasks

struct KNN: LibraryCommand {
    static let configuration = CommandConfiguration(
        commandName: "knn",
        abstract: "Weighted k-nearest-neighbour classification of frozen features (DINO's).",
        discussion: """
            Features of the eval transform (cached as for linprobe) are L2-normalised; each val image's k most \
            cosine-similar train images vote for their class with weight exp(similarity / T). With no arguments: \
            the shipped MAE and supervised checkpoints on Tasks/shapes-knn.yaml (k 20, T 0.07).
            """)

    @OptionGroup var flags: TransferFlags
    @OptionGroup var compute: ModelRunFlags
    @Option(help: "Neighbours (default: the task's, 20).")
    var k: Int?
    @Option(help: "Temperature T of the vote weights exp(sim / T) (default: the task's, 0.07).")
    var temperature: Float?
    @Option(help: "Pooled feature: the cls token or the mean of the patch tokens (default: the task's).")
    var pool: Pooling?

    func validate() throws {
        // Shared flags kNN has no use for: no training (--epochs), no randomness (--seed, --seeds).
        if flags.epochs != nil { throw ValidationError("--epochs does nothing for kNN (it trains nothing); leave it out.") }
        if flags.seed != nil || flags.seeds != nil {
            throw ValidationError("--\(flags.seed != nil ? "seed" : "seeds") does nothing for kNN (it draws nothing at random); leave it out.")
        }
    }

    var options: KNNOptions {
        get throws {
            var o = KNNOptions()
            o.common = try flags.options(compute)
            o.k = k
            o.temperature = temperature
            o.pooling = pool
            return o
        }
    }

    func call() throws -> [String] {
        let o = try options
        return try runAndReport(o.common) { try runKNN(o) }.map(\.dir.path)
    }
}
