/// A JSON number: its exact value, and that value correctly rounded to a Double.
///
/// JSON numbers are unbounded decimals, and both users need more than a Double: safetensors offsets
/// may pass 2^53, and re-written COCO numbers must read back as written. Integers are kept as Int64
/// or UInt64, decimals of up to 19 significant digits as a significand and a power of ten (no
/// allocation), anything longer as its source text.
public struct JSONNumber: Equatable, Sendable, CustomStringConvertible {
    /// The value, correctly rounded to the nearest Double (infinite beyond Double's range).
    public let doubleValue: Double
    let exact: Exact

    enum Exact: Sendable {
        case int(Int64)
        /// Integers above Int64.max.
        case uint(UInt64)
        /// (-1)^negative * significand * 10^exponent, without trailing zeros in the significand.
        case decimal(negative: Bool, significand: UInt64, exponent: Int32)
        /// A Double made in code; `doubleValue` is the value.
        case double
        /// Source text with more digits (or a larger exponent) than the forms above hold.
        case text(String)
    }

    init(doubleValue: Double, exact: Exact) {
        self.doubleValue = doubleValue
        self.exact = exact
    }

    /// An integer.
    public init(_ value: Int) { self.init(doubleValue: Double(value), exact: .int(Int64(value))) }

    /// A Double, written in its shortest round-trip form (integral values below 1e15 without a
    /// fraction, non-finite values as null).
    public init(_ value: Double) { self.init(doubleValue: value, exact: .double) }

    /// The value as an Int, if it is an integer that fits; nil for numbers written with a fraction
    /// or an exponent (`1.0`, `1e2`), as a size or an offset should not be.
    public var intValue: Int? {
        switch exact {
        case .int(let i): return Int(exactly: i)
        case .uint(let u): return Int(exactly: u)
        case .double: return Int(exactly: doubleValue)
        case .decimal: return nil
        case .text(let t): return Int(t)
        }
    }

    /// The value as a UInt64, if it is a non-negative integer that fits (same rules as `intValue`).
    public var uint64Value: UInt64? {
        switch exact {
        case .int(let i): return UInt64(exactly: i)
        case .uint(let u): return u
        case .double: return UInt64(exactly: doubleValue)
        case .decimal: return nil
        case .text(let t): return UInt64(t)
        }
    }

    /// The JSON text written for this number.
    public var description: String {
        switch exact {
        case .int(let i): return String(i)
        case .uint(let u): return String(u)
        case .text(let t): return t
        case .double:
            let d = doubleValue
            if !d.isFinite { return "null" }
            if d == d.rounded(), abs(d) < 1e15 { return String(Int(d)) }
            return "\(d)"
        case .decimal(let negative, let significand, let exponent):
            return decimalText(negative: negative, digits: String(significand), exponent: Int(exponent))
        }
    }

    /// Numbers are equal when their decimal values are: `1`, `1.0` and `10e-1` are equal.
    public static func == (a: JSONNumber, b: JSONNumber) -> Bool {
        if case .int(let x) = a.exact, case .int(let y) = b.exact { return x == y }
        let ta = a.description, tb = b.description
        guard let ca = canonicalDecimal(ta), let cb = canonicalDecimal(tb) else { return ta == tb }
        return ca == cb
    }
}

/// Decimal text for (-1)^negative * digits * 10^exponent, always with a '.' or an 'e' so that it
/// reads back as a decimal, not an integer: 1.5, 1500.0, 0.0015, 1.5e-7, 1.5e25.
private func decimalText(negative: Bool, digits: String, exponent: Int) -> String {
    let d = Array(digits)
    let point = d.count + exponent  // the value is 0.<digits> * 10^point
    var out = negative ? "-" : ""
    if point > 0 && point <= 21 {
        if point >= d.count {
            out += digits + String(repeating: "0", count: point - d.count) + ".0"
        } else {
            out += String(d[..<point]) + "." + String(d[point...])
        }
    } else if point <= 0 && point > -6 {
        out += "0." + String(repeating: "0", count: -point) + digits
    } else {
        out += String(d[0]) + (d.count > 1 ? "." + String(d[1...]) : "") + "e" + String(point - 1)
    }
    return out
}

/// A number's text as (negative, significant digits, exponent) with digits * 10^exponent its
/// magnitude, leading and trailing zeros removed (zero is (false, [], 0)); nil for text that is not
/// a JSON number or whose exponent does not fit in an Int.
private func canonicalDecimal(_ text: String) -> (Bool, [UInt8], Int)? {
    let b = Array(text.utf8)
    var i = 0
    let negative = b.first == UInt8(ascii: "-")
    if negative { i += 1 }
    var digits: [UInt8] = [], exponent = 0, seenPoint = false
    while i < b.count, b[i] == UInt8(ascii: ".") || (0x30...0x39).contains(b[i]) {
        if b[i] == UInt8(ascii: ".") {
            seenPoint = true
        } else {
            digits.append(b[i])
            if seenPoint { exponent -= 1 }
        }
        i += 1
    }
    if i < b.count {
        guard b[i] == UInt8(ascii: "e") || b[i] == UInt8(ascii: "E"),
              let e = Int(String(decoding: b[(i + 1)...], as: UTF8.self)) else { return nil }
        let (sum, overflow) = exponent.addingReportingOverflow(e)
        guard !overflow else { return nil }
        exponent = sum
    }
    digits.removeFirst(digits.prefix { $0 == UInt8(ascii: "0") }.count)
    if digits.isEmpty { return (false, [], 0) }
    let trailing = digits.reversed().prefix { $0 == UInt8(ascii: "0") }.count
    digits.removeLast(trailing)
    return (negative, digits, exponent + trailing)
}
