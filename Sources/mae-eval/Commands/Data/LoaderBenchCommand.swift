import ArgumentParser
import Foundation
import MAETasks

/// `mae-eval data loader-bench`: how fast the loader decodes and augments a folder.
struct LoaderBenchCommand: LibraryCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader-bench",
        abstract: "Measure loader throughput (decode + augment + normalise) in images/s; prints one JSON line.")

    @Option(name: .long, help: "An ImageFolder dataset.")
    var data: URL

    @Option(name: .long, help: "Output side in pixels.")
    var size: Int = 224

    @Option(name: .long, help: "The transform timed: train (RandomResizedCrop + flip) or eval (resize + center crop).")
    var mode = LoaderBenchMode.train

    @Option(name: .long, help: "Background threads.")
    var workers: Int = 2

    @Option(name: .long, help: "Images per batch.")
    var batchSize: Int = 32

    var options: LoaderBenchOptions {
        var o = LoaderBenchOptions(data: data)
        o.size = size
        o.mode = mode
        o.workers = workers
        o.batchSize = batchSize
        return o
    }

    func call() throws -> [String] { [try runLoaderBench(options)] }
}
