import Foundation

/// Wall-clock totals per kernel family, for `mae-eval bench --profile` (off by default: one branch
/// per call). Only calls made from the orchestrating thread are timed, so totals do not double count.
public enum Profiler {
    public enum Category: String, CaseIterable, Sendable { case gemm, attention, layerNorm, gelu, optimizer }

    nonisolated(unsafe) public static var enabled = false
    nonisolated(unsafe) public private(set) static var seconds: [Category: Double] = [:]

    public static func reset() { seconds = [:] }

    @inline(__always)
    public static func measure<T>(_ category: Category, _ body: () -> T) -> T {
        guard enabled else { return body() }
        let start = DispatchTime.now().uptimeNanoseconds
        let result = body()
        seconds[category, default: 0] += Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        return result
    }
}
