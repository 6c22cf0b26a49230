import Foundation

/// A small deterministic random stream (SplitMix64): the same seed gives the same numbers on every
/// machine and thread count. Streams for independent uses are derived with `derived(_:)`.
public struct RandomStream: Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    /// A stream for sub-task `key` (an epoch, a sample index, ...), independent of this one.
    public func derived(_ key: UInt64) -> RandomStream {
        var s = RandomStream(seed: state ^ (key &* 0xD1B5_4A32_D192_ED03))
        _ = s.next()
        return s
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextFloat() -> Float { Float(next() >> 40) * (1 / 16_777_216) }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func nextDouble() -> Double { Double(next() >> 11) * (1 / 9_007_199_254_740_992) }

    /// Uniform integer in 0..<n.
    public mutating func nextInt(_ n: Int) -> Int { Int(next() % UInt64(n)) }

    /// Standard normal (Box-Muller).
    public mutating func nextGaussian() -> Float {
        let u1 = max(nextDouble(), 1e-300), u2 = nextDouble()
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }
}

