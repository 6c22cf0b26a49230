import Foundation
import MAEKernels

/// Batch statistics of a BatchNorm layer over every rank's part of the global batch, as
/// torch.nn.SyncBatchNorm forms them: per-channel sums and sums of squares and the element
/// count, all-reduced in double precision, then mean and biased variance of the whole batch.
///
/// The probe head's BatchNorm1d calls `reduced` in training mode instead of using its local
/// statistics (MAEDense's `BatchNorm2d` forms the same sums through `RankSum`, which `World` is).
/// With one process it is the local statistics.
public struct SyncBatchStatistics: Sendable, Equatable {
    /// Per channel, over every rank.
    public var mean: [Double], variance: [Double]
    /// Elements per channel over every rank (N x H x W summed).
    public var count: Int

    /// The global statistics from this rank's per-channel `sum` and `sumOfSquares` over `count`
    /// elements per channel. One all-reduce of 2C + 1 values.
    public static func reduced(sum: [Double], sumOfSquares: [Double], count: Int,
                               world: World = Distributed.world) throws -> SyncBatchStatistics {
        precondition(sum.count == sumOfSquares.count, "one sum and one sum of squares per channel")
        let c = sum.count
        var buffer = sum + sumOfSquares + [Double(count)]
        try world.allReduceSum(&buffer, "the SyncBatchNorm statistics all-reduce")
        let n = buffer[2 * c]
        let mean = (0..<c).map { buffer[$0] / max(n, 1) }
        let variance = (0..<c).map { max(buffer[c + $0] / max(n, 1) - mean[$0] * mean[$0], 0) }
        return SyncBatchStatistics(mean: mean, variance: variance, count: Int(n))
    }
}

extension World: RankSum {
    /// `allReduceSum(_:)` in double precision; an MPI failure prints its sentence (prefixed with the
    /// rank, as the CLI prints errors) and ends every rank of the job, since a layer cannot throw.
    public func sumOverRanks(_ values: inout [Double]) {
        do {
            try allReduceSum(&values, "a SyncBatchNorm or sample-count all-reduce")
        } catch {
            FileHandle.standardError.write(Data("error: rank \(rank) of \(size): \(error)\n".utf8))
            abort(code: 1)
            fatalError("\(error)")
        }
    }
}
