import Foundation

/// The project's one random generator (SplitMix64): the same seed gives the same numbers on every
/// machine and thread count. Independent streams come from (seed, epoch, index), so a sample's
/// augmentation depends only on those three numbers and never on which thread ran it or when, or
/// from `derived(_:)` for sub-tasks (a step's mask noise, its drop-path draws, ...).
public struct RandomStream: RandomNumberGenerator, Sendable {
    public private(set) var state: UInt64

    /// A generator for one seed.
    public init(seed: UInt64) {
        state = RandomStream.mix(seed &+ 0x9E37_79B9_7F4A_7C15)
    }

    /// The stream of one sample in one epoch: independent of every other (seed, epoch, index).
    public init(seed: UInt64, epoch: Int, index: Int) {
        var s = RandomStream.mix(seed &+ 0x9E37_79B9_7F4A_7C15)
        s = RandomStream.mix(s ^ UInt64(bitPattern: Int64(epoch)) &* 0xD1B5_4A32_D192_ED03)
        s = RandomStream.mix(s ^ UInt64(bitPattern: Int64(index)) &* 0x8CB9_2BA7_2F3D_8DD7)
        state = s
    }

    /// A stream for sub-task `key` (an epoch, a step, ...), independent of this one.
    public func derived(_ key: UInt64) -> RandomStream {
        var s = self
        s.state = RandomStream.mix(state ^ (key &* 0xD1B5_4A32_D192_ED03))
        return s
    }

    /// SplitMix64's finaliser.
    static func mix(_ z0: UInt64) -> UInt64 {
        var z = z0
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        return RandomStream.mix(state)
    }

    /// Uniform in [0, 1) with 24 random bits.
    public mutating func nextFloat() -> Float { Float(next() >> 40) * 0x1.0p-24 }

    /// Uniform in [0, 1) with 53 random bits.
    public mutating func unit() -> Double { Double(next() >> 11) * 0x1.0p-53 }

    /// Uniform in [lo, hi).
    public mutating func uniform(_ lo: Double, _ hi: Double) -> Double { lo + (hi - lo) * unit() }

    /// Uniform integer in 0..<n (n > 0), by rejection so it is exactly uniform; our own rather than
    /// `Int.random(in:)` so the stream cannot change with the standard library.
    public mutating func below(_ n: Int) -> Int {
        precondition(n > 0, "below(n) needs n > 0")
        let bound = UInt64(n)
        let limit = UInt64.max - UInt64.max % bound
        while true {
            let r = next()
            if r < limit { return Int(r % bound) }
        }
    }

    /// Shuffles `items` in place: Fisher-Yates from the last element down, swapping element i with
    /// one `below(i + 1)` draw, so a seed gives the same order on every machine. Every shuffle in
    /// mae-eval (loader order, probe mini-batches, held-out splits) is this one.
    public mutating func shuffle<Element>(_ items: inout [Element]) {
        for i in stride(from: items.count - 1, to: 0, by: -1) { items.swapAt(i, below(i + 1)) }
    }

    /// Uniform integer in lo...hi (Python's `random.randint`).
    public mutating func integer(_ lo: Int, _ hi: Int) -> Int { lo + below(hi - lo + 1) }

    /// True with probability p.
    public mutating func chance(_ p: Double) -> Bool { unit() < p }

    /// A standard normal sample (Box-Muller, one of the pair).
    public mutating func normal() -> Double {
        let u1 = 1 - unit()   // in (0, 1], so the log is finite
        let u2 = unit()
        return (-2 * log(u1)).squareRoot() * cos(2 * Double.pi * u2)
    }

    /// A Gamma(shape, 1) sample (Marsaglia-Tsang; shapes below 1 boosted by U^(1/shape)).
    public mutating func gamma(_ shape: Double) -> Double {
        precondition(shape > 0, "gamma needs a positive shape")
        if shape < 1 { return gamma(shape + 1) * pow(1 - unit(), 1 / shape) }
        let d = shape - 1.0 / 3, c = 1 / (9 * d).squareRoot()
        while true {
            var x = 0.0, v = 0.0
            repeat {
                x = normal()
                v = 1 + c * x
            } while v <= 0
            v = v * v * v
            let u = 1 - unit()
            if log(u) < 0.5 * x * x + d - d * v + d * log(v) { return d * v }
        }
    }

    /// A Beta(a, b) sample, as numpy's `np.random.beta` draws mixup's lambda.
    public mutating func beta(_ a: Double, _ b: Double) -> Double {
        let x = gamma(a), y = gamma(b)
        return x + y > 0 ? x / (x + y) : 0.5
    }
}
