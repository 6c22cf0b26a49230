import Foundation

/// The NaN and infinite values of a float buffer: how many of each and where the first one is.
public struct NonFiniteCount: Sendable, Equatable {
    public var nan: Int
    public var infinite: Int
    /// Index of the first NaN or infinite element.
    public var first: Int

    /// "1 NaN value", "2 infinite values", "1 NaN and 2 infinite values".
    public var phrase: String {
        switch (nan, infinite) {
        case (_, 0): return "\(nan) NaN value" + (nan == 1 ? "" : "s")
        case (0, _): return "\(infinite) infinite value" + (infinite == 1 ? "" : "s")
        default: return "\(nan) NaN and \(infinite) infinite values"
        }
    }

    public init(nan: Int, infinite: Int, first: Int) {
        self.nan = nan; self.infinite = infinite; self.first = first
    }

    /// Counts the non-finite values of `values`; nil when all are finite. The common all-finite case
    /// is one branch-free pass over the exponent bits (it vectorises); only a hit is counted in detail.
    public init?(_ values: UnsafeBufferPointer<Float>) {
        guard let base = values.baseAddress, !values.isEmpty else { return nil }
        let bits = UnsafeRawPointer(base).assumingMemoryBound(to: UInt32.self)
        var any: UInt32 = 0
        for i in 0..<values.count { any |= ((bits[i] & 0x7F80_0000) &+ 0x0080_0000) & 0x8000_0000 }
        guard any != 0 else { return nil }
        var nan = 0, inf = 0, first = -1
        for i in 0..<values.count where !values[i].isFinite {
            if first < 0 { first = i }
            if values[i].isNaN { nan += 1 } else { inf += 1 }
        }
        self.init(nan: nan, infinite: inf, first: first)
    }

    /// `init?(_:)` over an array.
    public init?(_ values: [Float]) {
        guard let found = values.withUnsafeBufferPointer({ NonFiniteCount($0) }) else { return nil }
        self = found
    }
}

extension StoredTensor {
    /// The NaN and infinite values of the tensor as Float (after conversion: an F64 beyond Float's
    /// range counts as infinite), nil when all are finite. F32 is scanned in place, without a copy.
    public var nonFiniteCount: NonFiniteCount? {
        if dtype == .f32, bytes.count % 4 == 0 {
            let aligned = bytes.withUnsafeBytes { $0.baseAddress.map { Int(bitPattern: $0) % 4 == 0 } ?? true }
            if aligned {
                return bytes.withUnsafeBytes { NonFiniteCount($0.bindMemory(to: Float.self)) }
            }
        }
        return NonFiniteCount(floats)
    }
}
