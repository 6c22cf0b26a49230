import CMPI
import Foundation
import MAEKernels

/// An MPI call that failed, as one sentence.
public struct DistributedError: Error, LocalizedError, CustomStringConvertible {
    /// What was being done ("the gradient all-reduce").
    public var operation: String
    /// MPI's own text for the error code, or our reason.
    public var reason: String
    public var rank: Int, size: Int

    public var description: String {
        "MPI failed during \(operation) on rank \(rank) of \(size): \(reason)."
    }
    public var errorDescription: String? { description }
}

/// The processes of one job. Without a launcher it is one process (rank 0 of 1) and every
/// operation returns at once without touching MPI; under `mpirun`/`srun` it is MPI_COMM_WORLD.
///
/// Only the main thread calls it (MPI_THREAD_FUNNELED): the loader's and the kernels' threads never do.
public final class World: @unchecked Sendable {
    /// From 0.
    public let rank: Int
    public let size: Int
    /// Ranks on this node (sharing its cores).
    public let localSize: Int
    /// Compute threads each rank should run: the cores its launcher bound it to, else the node's
    /// cores shared among the node's ranks.
    public let coresPerRank: Int
    /// Whether MPI was initialised (a launcher started this process).
    public let usesMPI: Bool

    /// Rank 0: the one that writes run folders, logs, checkpoints, reports and progress.
    public var isMain: Bool { rank == 0 }

    /// One process without MPI.
    public static let single = World(rank: 0, size: 1, localSize: 1,
                                     coresPerRank: max(1, ProcessInfo.processInfo.activeProcessorCount), usesMPI: false)

    init(rank: Int, size: Int, localSize: Int, coresPerRank: Int, usesMPI: Bool) {
        self.rank = rank; self.size = size; self.localSize = localSize; self.coresPerRank = coresPerRank
        self.usesMPI = usesMPI
    }

    /// Whether a launcher started this process: Open MPI's `OMPI_COMM_WORLD_SIZE`, or a PMI/PMIx
    /// launcher's `PMI_SIZE` / `PMIX_RANK` (Slurm's srun, MPICH's hydra).
    public static func launched(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"].contains { environment[$0] != nil }
    }

    /// Initialises MPI (once per process) and reads rank, size and the node's ranks; MPI_Finalize
    /// runs at exit.
    static func initialiseMPI() throws -> World {
        let failed = { (operation: String, code: Int32) in
            DistributedError(operation: operation, reason: World.text(code), rank: 0, size: 0)
        }
        var code = mae_mpi_init()
        guard code == mae_mpi_success() else { throw failed("MPI_Init (the launcher's environment is set)", code) }
        atexit { _ = mae_mpi_finalize() }
        var rank: Int32 = 0, size: Int32 = 0
        code = mae_mpi_rank(&rank)
        guard code == mae_mpi_success() else { throw failed("MPI_Comm_rank", code) }
        code = mae_mpi_size(&size)
        guard code == mae_mpi_success() else { throw failed("MPI_Comm_size", code) }
        let local = Int(mae_mpi_local_size())
        guard local > 0 else {
            throw DistributedError(operation: "finding the ranks on this node", reason: "MPI_Comm_split_type failed",
                                   rank: Int(rank), size: Int(size))
        }
        let node = max(1, ProcessInfo.processInfo.activeProcessorCount)
        let bound = Int(mae_affinity_cores())
        let cores = bound > 0 && bound < node ? bound : max(1, node / local)
        return World(rank: Int(rank), size: Int(size), localSize: local, coresPerRank: cores, usesMPI: true)
    }

    static func text(_ code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(mae_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        guard mae_mpi_error_string(code, &buffer, &length) == mae_mpi_success() else { return "MPI error code \(code)" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private func check(_ code: Int32, _ operation: String) throws {
        guard code != mae_mpi_success() else { return }
        throw DistributedError(operation: operation, reason: World.text(code), rank: rank, size: size)
    }

    /// The largest element count one MPI call takes (its counts are C ints).
    static let chunk = 1 << 30

    /// Sums `values` over all ranks, in place (every rank gets the sum). Float32, summed in MPI's order.
    public func allReduceSum(_ values: UnsafeMutableBufferPointer<Float>, _ operation: String = "an all-reduce") throws {
        guard usesMPI, size > 1, let base = values.baseAddress else { return }
        for start in stride(from: 0, to: values.count, by: World.chunk) {
            try check(mae_mpi_allreduce_sum_float(base + start, Int32(min(World.chunk, values.count - start))), operation)
        }
    }

    /// Sums `values` over all ranks, in place, in double precision.
    public func allReduceSum(_ values: inout [Double], _ operation: String = "an all-reduce") throws {
        guard usesMPI, size > 1, !values.isEmpty else { return }
        let count = Int32(values.count)
        let code = values.withUnsafeMutableBufferPointer { mae_mpi_allreduce_sum_double($0.baseAddress!, count) }
        try check(code, operation)
    }

    /// Rank `root`'s `bytes` on every rank (each rank passes a buffer of the same length).
    public func broadcast(_ bytes: inout [UInt8], from root: Int = 0, _ operation: String = "a broadcast") throws {
        guard usesMPI, size > 1, !bytes.isEmpty else { return }
        precondition(bytes.count <= World.chunk, "a broadcast of more than \(World.chunk) bytes")
        let count = Int32(bytes.count)
        let code = bytes.withUnsafeMutableBytes { mae_mpi_broadcast_bytes($0.baseAddress!, count, Int32(root)) }
        try check(code, operation)
    }

    /// Waits until every rank reaches it.
    public func barrier(_ operation: String = "a barrier") throws {
        guard usesMPI, size > 1 else { return }
        try check(mae_mpi_barrier(), operation)
    }

    /// Every rank's `mine`, in rank order, on every rank (lengths may differ).
    public func allGather(_ mine: [UInt8], _ operation: String = "an all-gather") throws -> [[UInt8]] {
        guard usesMPI, size > 1 else { return [mine] }
        guard mine.count <= Int(Int32.max) else {
            throw DistributedError(operation: operation, reason: "rank \(rank)'s part is \(mine.count) bytes, more than one MPI message holds (2^31 - 1)",
                                   rank: rank, size: size)
        }
        var counts = [Int32](repeating: 0, count: size)
        var myCount = Int32(mine.count)
        try check(mae_mpi_allgather_int(&myCount, 1, &counts), operation)
        let total = counts.reduce(0) { $0 + Int($1) }
        guard total <= Int(Int32.max) else {
            throw DistributedError(operation: operation, reason: "the ranks' parts add up to \(total) bytes, more than one MPI message holds (2^31 - 1); use fewer images per call",
                                   rank: rank, size: size)
        }
        var displacements = [Int32](repeating: 0, count: size)
        for r in 1..<size { displacements[r] = displacements[r - 1] + counts[r - 1] }
        var all = [UInt8](repeating: 0, count: max(total, 1))
        let code = mine.withUnsafeBytes { m in
            all.withUnsafeMutableBytes { a in
                mae_mpi_allgatherv_bytes(m.baseAddress, myCount, a.baseAddress!, counts, displacements)
            }
        }
        try check(code, operation)
        return (0..<size).map { r in Array(all[Int(displacements[r])..<(Int(displacements[r]) + Int(counts[r]))]) }
    }

    /// Ends every rank of the job with `code` (an error on one rank would leave the others waiting
    /// in their next collective). One process just returns.
    public func abort(code: Int32) {
        guard usesMPI, size > 1 else { return }
        mae_mpi_abort(code)
    }
}

/// The job's `World`, started once per process.
public enum Distributed {
    private static let started: Result<World, DistributedError> = {
        guard World.launched() else { return .success(.single) }
        do {
            let world = try World.initialiseMPI()
            Parallel.workers = world.coresPerRank
            return .success(world)
        } catch let error as DistributedError {
            return .failure(error)
        } catch {
            return .failure(DistributedError(operation: "MPI_Init", reason: "\(error)", rank: 0, size: 0))
        }
    }()

    /// Starts the world: MPI_Init only when a launcher started this process (`World.launched`),
    /// and then `Parallel.workers` becomes the cores per rank. One process without a launcher never
    /// touches MPI. The CLI calls this first, so a failing MPI start is one sentence.
    @discardableResult
    public static func start() throws -> World { try started.get() }

    /// The started world (one process when `start` failed or was never called without a launcher).
    public static var world: World { (try? started.get()) ?? .single }
}
