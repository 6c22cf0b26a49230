import Foundation

/// Our own worker threads. OpenBLAS runs single-threaded (see `BLAS.configure`) and every
/// parallel loop, matrix products included, splits its work here, so the two never oversubscribe
/// the cores and OpenBLAS's spinning workers never steal time from the non-matrix kernels.
public enum Parallel {
    /// Number of workers; defaults to the active core count.
    nonisolated(unsafe) public static var workers = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// How many chunks `forChunks` will use for `count` items of at least `grain` each.
    @inlinable
    public static func chunkCount(_ count: Int, grain: Int = 1) -> Int {
        min(workers, max(1, count / max(grain, 1)))
    }

    /// Runs `body(chunk, range)` for each chunk of a static partition of `0..<count` (chunk in
    /// `0..<chunkCount(count, grain:)`), so callers can keep one partial result per chunk.
    @inlinable
    public static func forChunks(_ count: Int, grain: Int = 1, _ body: (Int, Range<Int>) -> Void) {
        guard count > 0 else { return }
        let chunks = chunkCount(count, grain: grain)
        if chunks <= 1 { body(0, 0..<count); return }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = count * c / chunks, hi = count * (c + 1) / chunks
            if lo < hi { body(c, lo..<hi) }
        }
    }

    /// Runs `body(range)` over a static partition of `0..<count` into at most `workers` chunks
    /// of at least `grain` items. Static chunks keep results independent of thread timing.
    @inlinable
    public static func forRanges(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        forChunks(count, grain: grain) { _, range in body(range) }
    }

    /// Runs `body(i)` for every `i` in `0..<count`, chunked statically over the workers.
    @inlinable
    public static func forEach(_ count: Int, grain: Int = 1, _ body: (Int) -> Void) {
        forRanges(count, grain: grain) { range in for i in range { body(i) } }
    }
}
