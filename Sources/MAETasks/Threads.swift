import Foundation
import MAEKernels

/// `--threads` for one library call: checks the count, sets `Parallel.workers` and puts the
/// previous count back when the call ends (`defer { threads.restore() }`).
public struct ComputeThreads {
    /// The largest count accepted: four workers per core (more only adds switching).
    public static var limit: Int { 4 * max(1, ProcessInfo.processInfo.activeProcessorCount) }

    private let previous: Int

    /// nil keeps the current count (every core by default).
    public init(_ threads: Int?) throws {
        previous = Parallel.workers
        guard let threads else { return }
        guard (1...ComputeThreads.limit).contains(threads) else {
            let cores = ProcessInfo.processInfo.activeProcessorCount
            throw TaskError.badArgument("--threads must be between 1 and \(ComputeThreads.limit) " +
                                        "(4 per core, \(cores) cores here), not \(threads)")
        }
        Parallel.workers = threads
    }

    public func restore() { Parallel.workers = previous }
}
