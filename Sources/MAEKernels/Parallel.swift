import Foundation

/// Our own worker threads. OpenBLAS runs single-threaded (see `BLAS.configure`) and every
/// parallel loop, matrix products included, splits its work here, so the two never oversubscribe
/// the cores and OpenBLAS's spinning workers never steal time from the non-matrix kernels.
public enum Parallel {
    /// Number of workers; defaults to the active core count.
    nonisolated(unsafe) public static var workers = max(1, ProcessInfo.processInfo.activeProcessorCount)

    /// Runs `body(range)` over a static partition of `0..<count` into at most `workers` chunks
    /// of at least `grain` items. Static chunks keep results independent of thread timing.
    @inlinable
    public static func forRanges(_ count: Int, grain: Int = 1, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let chunks = min(workers, max(1, count / max(grain, 1)))
        if chunks <= 1 { body(0..<count); return }
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            let lo = count * c / chunks, hi = count * (c + 1) / chunks
            if lo < hi { body(lo..<hi) }
        }
    }

    /// Runs `body(i)` for every `i` in `0..<count`, chunked statically over the workers.
    @inlinable
    public static func forEach(_ count: Int, grain: Int = 1, _ body: (Int) -> Void) {
        forRanges(count, grain: grain) { range in for i in range { body(i) } }
    }
}
