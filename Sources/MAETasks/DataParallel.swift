import Foundation
import MAEData
import MAEDistributed
import MAEKernels
import MAEModels

/// Data-parallel training over the job's ranks, as `TrainingLoop` runs it: each rank's loader
/// builds its rows of every global batch (`DataLoader(rank:of:)`), the task's step computes the
/// mean loss of those rows and its gradients, and per step
/// - the loss terms become the global batch's (shard means weighted by count / total, summed over
///   ranks), so the divergence check, the log and the progress line see what one process sees;
/// - the gradients, scaled by the shard's weight, are summed over ranks in one all-reduce of the
///   flat gradient buffer: the gradient of the global batch's mean loss, on every rank;
/// then every rank clips and steps identically. Only rank 0 writes files.
///
/// Any task that trains through `TrainingLoop` gets this (detection and segmentation too): its step
/// must use the batch's own rows only and set `VisionTransformer.batchShard` (`Segmenter.batchShard`,
/// `MaskRCNN.globalBatch`) to `batch.shard` so per-sample draws match one process; BatchNorm layers
/// reduce their statistics over the ranks (SyncBN: `SyncBatchNorm.ranks` bound to `world` for
/// `BatchNorm2d`, `SyncBatchStatistics.reduced` for the probe's BatchNorm1d).
public struct DataParallel {
    public let world: World

    /// nil for one process (nothing to reduce: the loop stays bit-identical to a run without MPI).
    public init?(world: World = Distributed.world) {
        guard world.size > 1 else { return nil }
        self.world = world
    }

    /// Refuses a loader that is not this rank's shard (its whole batches on every rank would count
    /// N times) or whose global batches could leave a rank without rows.
    public func check(_ loader: DataLoader, flag: String) throws {
        guard loader.rank == world.rank, loader.ranks == world.size else {
            throw TaskError.badArgument("this task's loader is rank \(loader.rank) of \(loader.ranks), not this process's " +
                                        "rank \(world.rank) of \(world.size), so it cannot train over MPI")
        }
        let n = loader.sampleCount, b = loader.batchSize
        let last = loader.dropLast ? b : (n % b == 0 ? b : n % b)
        guard b >= world.size, last >= world.size else {
            throw TaskError.badArgument("\(flag) \(b) over \(world.size) ranks leaves a rank without images " +
                                        "(every batch\(last < b ? ", the last one of \(last) included," : "") " +
                                        "needs at least one image per rank); use a larger batch or fewer ranks")
        }
    }

    /// The global batch's loss terms from this rank's `terms` (means over `shard`'s rows).
    public func reduce(_ terms: [String: Double], shard: BatchShard) throws -> [String: Double] {
        let names = terms.keys.sorted()
        var values = names.map { terms[$0]! * shard.weight }
        try world.allReduceSum(&values, "the loss all-reduce")
        return Dictionary(uniqueKeysWithValues: zip(names, values))
    }

    /// Replaces this rank's gradients (of its shard's mean loss) by those of the global batch's mean
    /// loss: scaled by the shard's weight, summed over ranks in one buffer.
    public func averageGradients(_ params: ParameterStore, shard: BatchShard) throws {
        let grads = params.grads.buffer
        let weight = Float(shard.weight)
        for i in grads.indices { grads[i] *= weight }
        try world.allReduceSum(grads, "the gradient all-reduce")
    }
}

/// Runs `body` on rank 0 first and on the other ranks once it has returned (a barrier between):
/// for work that writes shared files when they are missing, such as generating the Shapes data on
/// first use, so the ranks never write it at once. One process just runs it. An error on rank 0
/// ends the job before the others start (`runCLI` aborts).
@discardableResult
public func rankZeroFirst<T>(_ body: () throws -> T) throws -> T {
    let world = Distributed.world
    guard world.size > 1 else { return try body() }
    if world.isMain {
        let result = try body()
        try world.barrier("waiting for rank 0 to prepare shared files")
        return result
    }
    try world.barrier("waiting for rank 0 to prepare shared files")
    return try body()
}
