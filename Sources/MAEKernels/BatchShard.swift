/// One rank's rows of a global batch under data parallelism: rows `offset ..< offset + count` of a
/// batch of `total`. One process holds the whole batch (`offset` 0, `count` == `total`).
///
/// Per-sample random draws (drop path, masking noise) are made for all `total` rows from the step's
/// stream and each rank keeps its own rows, so N ranks draw exactly what one process draws.
public struct BatchShard: Sendable, Equatable {
    public var offset: Int, count: Int, total: Int

    public init(offset: Int, count: Int, total: Int) {
        precondition(offset >= 0 && count >= 0 && offset + count <= total, "rows \(offset)..<\(offset + count) of \(total)")
        self.offset = offset; self.count = count; self.total = total
    }

    /// The whole batch of `rows`.
    public static func whole(_ rows: Int) -> BatchShard { BatchShard(offset: 0, count: rows, total: rows) }

    /// Rank `rank`'s contiguous share of `total` rows split over `ranks`: rows
    /// total * rank / ranks ..< total * (rank + 1) / ranks (shares differ by at most one row).
    public init(rank: Int, of ranks: Int, total: Int) {
        precondition(ranks > 0 && (0..<ranks).contains(rank), "rank \(rank) of \(ranks)")
        let lo = total * rank / ranks, hi = total * (rank + 1) / ranks
        self.init(offset: lo, count: hi - lo, total: total)
    }

    /// Whether this is the whole batch.
    public var isWhole: Bool { count == total }

    /// This shard's share of a batch mean: count / total (a rank's mean times it, summed over ranks,
    /// is the global batch's mean).
    public var weight: Double { total == 0 ? 0 : Double(count) / Double(total) }

    /// This shard's rows of `perRow`-value rows drawn for the whole batch: `draw(total * perRow)`
    /// sliced to rows offset ..< offset + count.
    public func rows<T>(_ all: [T], perRow: Int) -> [T] {
        Array(all[(offset * perRow)..<((offset + count) * perRow)])
    }
}

/// An elementwise sum over the ranks that hold one global batch, for code that cannot throw (a
/// layer's forward or backward: SyncBN's statistics, detection's sample counts). MAEDistributed's
/// `World` is one (an MPI failure ends the job); one process needs none and calls none.
public protocol RankSum: AnyObject, Sendable {
    /// Replaces `values` by their sum over the ranks (every rank passes as many values, in the same order).
    func sumOverRanks(_ values: inout [Double])
}
