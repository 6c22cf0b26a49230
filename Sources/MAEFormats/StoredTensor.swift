import Foundation
import MAEJSON

/// Element types as safetensors names them.
public enum DType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"

    /// Bytes per element.
    public var itemSize: Int {
        switch self {
        case .f64, .i64: return 8
        case .f32, .i32: return 4
        case .f16, .bf16, .i16: return 2
        case .i8, .u8, .bool: return 1
        }
    }

    /// True for the floating-point types.
    public var isFloatingPoint: Bool { [.f64, .f32, .f16, .bf16].contains(self) }
}

/// Element count of a shape, or nil when a dimension is negative or the product overflows Int.
public func elementCount(_ shape: [Int]) -> Int? {
    var n = 1
    for d in shape {
        guard d >= 0 else { return nil }
        let (p, overflow) = n.multipliedReportingOverflow(by: d)
        if overflow { return nil }
        n = p
    }
    return n
}

/// One tensor as a file stores it: shape, element type and the raw little-endian bytes (row-major,
/// contiguous). Conversions to Float or Int64 happen on access.
public struct StoredTensor: Sendable {
    public var shape: [Int]
    public var dtype: DType
    /// count * dtype.itemSize bytes, little-endian, row-major.
    public private(set) var bytes: Data

    /// A float32 tensor; `floats.count` must equal the product of `shape`.
    public init(shape: [Int], floats: [Float]) {
        precondition(elementCount(shape) == floats.count, "shape \(shape) does not hold \(floats.count) floats")
        self.shape = shape
        self.dtype = .f32
        self.bytes = floats.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Data($0) }
    }

    /// An int64 tensor; `int64s.count` must equal the product of `shape`.
    public init(shape: [Int], int64s: [Int64]) {
        precondition(elementCount(shape) == int64s.count, "shape \(shape) does not hold \(int64s.count) int64s")
        self.shape = shape
        self.dtype = .i64
        self.bytes = int64s.map { $0.littleEndian }.withUnsafeBytes { Data($0) }
    }

    /// A tensor of any dtype from its raw little-endian bytes; throws when the byte count does not match
    /// the shape (`source` names the file in the error).
    public init(shape: [Int], dtype: DType, bytes: Data, source: String = "tensor") throws {
        guard let n = elementCount(shape) else {
            throw PathError(source, "the shape \(shape) has a negative dimension or too many elements")
        }
        let (size, overflow) = n.multipliedReportingOverflow(by: dtype.itemSize)
        guard !overflow, size == bytes.count else {
            throw PathError(source, "a \(dtype.rawValue) tensor of shape \(shape) needs \(n) x \(dtype.itemSize) bytes " +
                              "but \(bytes.count) are stored")
        }
        self.shape = shape
        self.dtype = dtype
        self.bytes = bytes
    }

    /// Number of elements.
    public var count: Int { bytes.count / dtype.itemSize }

    /// The elements as Float: F16, BF16 and small integers convert exactly; F64 and wide integers round.
    public var floats: [Float] {
        let n = count
        return bytes.withUnsafeBytes { raw -> [Float] in
            [Float](unsafeUninitializedCapacity: n) { out, initialized in
                switch dtype {
                case .f32:
                    for i in 0..<n { out[i] = Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self))) }
                case .f64:
                    for i in 0..<n { out[i] = Float(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)))) }
                case .f16:
                    for i in 0..<n { out[i] = floatFromHalfBits(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
                case .bf16:
                    for i in 0..<n { out[i] = Float(bitPattern: UInt32(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) << 16) }
                case .i64:
                    for i in 0..<n { out[i] = Float(Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * i, as: Int64.self))) }
                case .i32:
                    for i in 0..<n { out[i] = Float(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
                case .i16:
                    for i in 0..<n { out[i] = Float(Int16(littleEndian: raw.loadUnaligned(fromByteOffset: 2 * i, as: Int16.self))) }
                case .i8:
                    for i in 0..<n { out[i] = Float(Int8(bitPattern: raw[i])) }
                case .u8:
                    for i in 0..<n { out[i] = Float(raw[i]) }
                case .bool:
                    for i in 0..<n { out[i] = raw[i] != 0 ? 1 : 0 }
                }
                initialized = n
            }
        }
    }

    /// The elements as Int64: integer types widen; float types truncate toward zero (NaN becomes 0,
    /// values beyond Int64's range clamp).
    public var int64s: [Int64] {
        switch dtype {
        case .i64:
            let n = count
            return bytes.withUnsafeBytes { raw in
                (0..<n).map { Int64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self)) }
            }
        case .f64:
            let n = count
            return bytes.withUnsafeBytes { raw in
                (0..<n).map { truncatedInt64(Double(bitPattern: UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)))) }
            }
        default:
            // Every other dtype converts to Float exactly (integers of 32 bits or fewer, except i32
            // beyond 2^24, which only a float dtype would hold anyway), so go through floats.
            if dtype == .i32 {
                let n = count
                return bytes.withUnsafeBytes { raw in
                    (0..<n).map { Int64(Int32(littleEndian: raw.loadUnaligned(fromByteOffset: 4 * $0, as: Int32.self))) }
                }
            }
            return floats.map { truncatedInt64(Double($0)) }
        }
    }
}

/// Truncates toward zero, mapping NaN to 0 and clamping to Int64's range instead of trapping.
func truncatedInt64(_ x: Double) -> Int64 {
    if x.isNaN { return 0 }
    if x >= 9.223372036854775807e18 { return .max }
    if x <= -9.223372036854775808e18 { return .min }
    return Int64(x)
}

/// IEEE 754 binary16 bits to Float (exact: every half is representable as a float).
func floatFromHalfBits(_ h: UInt16) -> Float {
    let sign = UInt32(h & 0x8000) << 16
    let exponent = Int(h >> 10) & 0x1F
    let mantissa = UInt32(h & 0x3FF)
    if exponent == 0x1F {  // inf / NaN
        return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
    }
    if exponent == 0 {  // zero / subnormal: mantissa * 2^-24
        let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
        return sign != 0 ? -magnitude : magnitude
    }
    return Float(bitPattern: sign | UInt32(exponent + 112) << 23 | (mantissa << 13))
}
