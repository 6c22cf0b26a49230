import Foundation

/// Why a JSON text was rejected: what, and at which byte (counted from 0 at the start of the text).
/// Callers wrap it in their own error that names the file.
public struct JSONSyntaxError: Error, Equatable, CustomStringConvertible {
    public var message: String
    public var offset: Int

    public init(message: String, offset: Int) {
        self.message = message
        self.offset = offset
    }

    /// "<message> at byte <offset>".
    public var description: String { "\(message) at byte \(offset)" }
}

extension JSONValue {
    /// Parses UTF-8 JSON text strictly (RFC 8259: no comments, trailing commas, leading zeros,
    /// control characters in strings, unpaired surrogates or invalid UTF-8), with arrays and objects
    /// nested at most `maxDepth` deep. Throws `JSONSyntaxError`.
    public static func parse(_ bytes: some ContiguousBytes, maxDepth: Int = 512) throws -> JSONValue {
        try bytes.withUnsafeBytes { raw in
            var parser = JSONParser(bytes: raw.bindMemory(to: UInt8.self), maxDepth: maxDepth)
            return try parser.document()
        }
    }

    /// Parses JSON text held in a String; see `parse(_:maxDepth:)`.
    public static func parse(_ text: String, maxDepth: Int = 512) throws -> JSONValue {
        var text = text
        return try text.withUTF8 { utf8 in
            var parser = JSONParser(bytes: utf8, maxDepth: maxDepth)
            return try parser.document()
        }
    }
}

private let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\"), zero = UInt8(ascii: "0")

/// Powers of ten that are exact in a Double (10^22 is the largest).
private let exactPowersOfTen: [Double] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                          1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22]

/// Recursive-descent parser over the bytes of one document.
private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let maxDepth: Int
    var position = 0

    init(bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    mutating func document() throws -> JSONValue {
        skipSpace()
        let value = try value(depth: 0)
        skipSpace()
        guard position == bytes.count else { throw failure("unexpected text after the JSON value") }
        return value
    }

    func failure(_ message: String, at offset: Int? = nil) -> JSONSyntaxError {
        JSONSyntaxError(message: message, offset: offset ?? position)
    }

    mutating func skipSpace() {
        while position < bytes.count {
            switch bytes[position] {
            case 0x20, 0x0A, 0x0D, 0x09: position += 1
            default: return
            }
        }
    }

    /// A value inside `depth` enclosing arrays and objects.
    mutating func value(depth: Int) throws -> JSONValue {
        guard position < bytes.count else { throw failure("unexpected end of text") }
        switch bytes[position] {
        case UInt8(ascii: "{"): return .object(try object(depth: depth + 1))
        case UInt8(ascii: "["): return .array(try array(depth: depth + 1))
        case quote: return .string(try string())
        case UInt8(ascii: "t"): try literal("true"); return .bool(true)
        case UInt8(ascii: "f"): try literal("false"); return .bool(false)
        case UInt8(ascii: "n"): try literal("null"); return .null
        case UInt8(ascii: "-"), zero...UInt8(ascii: "9"): return .number(try number())
        default: throw failure("expected a value")
        }
    }

    mutating func object(depth: Int) throws -> JSONObject {
        guard depth <= maxDepth else { throw failure("nesting deeper than \(maxDepth) levels") }
        position += 1
        var members: [JSONObject.Element] = []
        skipSpace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "}") {
            position += 1
            return JSONObject(members)
        }
        while true {
            skipSpace()
            guard position < bytes.count, bytes[position] == quote else { throw failure("expected a string key") }
            let key = try string()
            skipSpace()
            guard position < bytes.count, bytes[position] == UInt8(ascii: ":") else {
                throw failure("expected ':' after a key")
            }
            position += 1
            skipSpace()
            members.append((key, try value(depth: depth)))
            skipSpace()
            if try closes(UInt8(ascii: "}")) { return JSONObject(members) }
        }
    }

    mutating func array(depth: Int) throws -> [JSONValue] {
        guard depth <= maxDepth else { throw failure("nesting deeper than \(maxDepth) levels") }
        position += 1
        var items: [JSONValue] = []
        skipSpace()
        if position < bytes.count, bytes[position] == UInt8(ascii: "]") {
            position += 1
            return items
        }
        while true {
            skipSpace()
            items.append(try value(depth: depth))
            skipSpace()
            if try closes(UInt8(ascii: "]")) { return items }
        }
    }

    /// After a member: true past the closing bracket, false past a comma.
    mutating func closes(_ close: UInt8) throws -> Bool {
        guard position < bytes.count else { throw failure("unexpected end of text") }
        let c = bytes[position]
        position += 1
        if c == close { return true }
        if c == UInt8(ascii: ",") { return false }
        position -= 1
        throw failure("expected ',' or '\(Character(Unicode.Scalar(close)))'")
    }

    mutating func literal(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard position + n <= bytes.count else { throw failure("unexpected end of text") }
        for i in 0..<n where bytes[position + i] != word.utf8Start[i] { throw failure("expected '\(word)'") }
        position += n
    }

    // MARK: Strings

    mutating func string() throws -> String {
        position += 1
        let start = position
        // Fast path: no escapes (COCO's RLE counts, most keys).
        while position < bytes.count {
            let c = bytes[position]
            if c == quote {
                let s = try text(start..<position)
                position += 1
                return s
            }
            if c == backslash || c < 0x20 { break }
            position += 1
        }
        var utf8 = Array(bytes[start..<position])
        while true {
            guard position < bytes.count else { throw failure("unterminated string") }
            let c = bytes[position]
            if c == quote { break }
            if c < 0x20 { throw failure("control character inside a string") }
            position += 1
            guard c == backslash else { utf8.append(c); continue }
            guard position < bytes.count else { throw failure("unterminated string") }
            let e = bytes[position]
            position += 1
            switch e {
            case quote, backslash, UInt8(ascii: "/"): utf8.append(e)
            case UInt8(ascii: "b"): utf8.append(0x08)
            case UInt8(ascii: "f"): utf8.append(0x0C)
            case UInt8(ascii: "n"): utf8.append(0x0A)
            case UInt8(ascii: "r"): utf8.append(0x0D)
            case UInt8(ascii: "t"): utf8.append(0x09)
            case UInt8(ascii: "u"): utf8.append(contentsOf: try unicodeEscape().utf8)
            default: throw failure("unknown escape '\\\(Character(Unicode.Scalar(e)))'", at: position - 2)
            }
        }
        let s = try utf8.withUnsafeBufferPointer { try text($0, from: start) }
        position += 1
        return s
    }

    /// The string of `bytes[range]`, which must be valid UTF-8.
    func text(_ range: Range<Int>) throws -> String {
        try text(UnsafeBufferPointer(rebasing: bytes[range]), from: range.lowerBound)
    }

    func text(_ utf8: UnsafeBufferPointer<UInt8>, from start: Int) throws -> String {
        guard let s = String(validating: utf8, as: UTF8.self) else {
            throw failure("a string that is not valid UTF-8", at: start)
        }
        return s
    }

    /// The character of a \uXXXX escape (a surrogate pair takes two), the "\u" already read.
    mutating func unicodeEscape() throws -> String {
        let start = position - 2
        var code = try hex4()
        if (0xD800..<0xDC00).contains(code) {
            guard position + 1 < bytes.count, bytes[position] == backslash, bytes[position + 1] == UInt8(ascii: "u") else {
                throw failure("unpaired surrogate", at: start)
            }
            position += 2
            let low = try hex4()
            guard (0xDC00..<0xE000).contains(low) else { throw failure("unpaired surrogate", at: start) }
            code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
        } else if (0xDC00..<0xE000).contains(code) {
            throw failure("unpaired surrogate", at: start)
        }
        guard let scalar = Unicode.Scalar(code) else { throw failure("invalid code point", at: start) }
        return String(Character(scalar))
    }

    mutating func hex4() throws -> UInt32 {
        guard position + 4 <= bytes.count else { throw failure("truncated \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[position]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw failure("bad hex digit in a \\u escape")
            }
            v = v << 4 | d
            position += 1
        }
        return v
    }

    // MARK: Numbers

    /// A number, validated against RFC 8259's grammar while its significant digits are gathered.
    mutating func number() throws -> JSONNumber {
        let start = position
        let negative = bytes[position] == UInt8(ascii: "-")
        if negative { position += 1 }
        // significand holds the significant digits while there are at most 19 (it cannot overflow).
        var significand: UInt64 = 0, significantDigits = 0, exact = true
        var exponent = 0
        func digit(_ c: UInt8) -> UInt64? { c &- zero < 10 ? UInt64(c &- zero) : nil }

        let integerStart = position
        while position < bytes.count, let d = digit(bytes[position]) {
            if significand != 0 || d != 0 {
                if significantDigits < 19 { significand = significand &* 10 &+ d; significantDigits += 1 } else { exact = false }
            }
            position += 1
        }
        guard position > integerStart else { throw failure("expected a digit") }
        if bytes[integerStart] == zero, position - integerStart > 1 {
            throw failure("number with a leading zero", at: integerStart)
        }
        var isInteger = true
        if position < bytes.count, bytes[position] == UInt8(ascii: ".") {
            isInteger = false
            position += 1
            let fractionStart = position
            while position < bytes.count, let d = digit(bytes[position]) {
                if significand != 0 || d != 0 {
                    if significantDigits < 19 { significand = significand &* 10 &+ d; significantDigits += 1 } else { exact = false }
                }
                exponent -= 1
                position += 1
            }
            guard position > fractionStart else { throw failure("expected a digit after '.'") }
        }
        if position < bytes.count, bytes[position] == UInt8(ascii: "e") || bytes[position] == UInt8(ascii: "E") {
            isInteger = false
            position += 1
            var exponentNegative = false
            if position < bytes.count, bytes[position] == UInt8(ascii: "+") || bytes[position] == UInt8(ascii: "-") {
                exponentNegative = bytes[position] == UInt8(ascii: "-")
                position += 1
            }
            let exponentStart = position
            var e = 0
            while position < bytes.count, let d = digit(bytes[position]) {
                if e < 100_000_000 { e = e * 10 + Int(d) } else { exact = false }
                position += 1
            }
            guard position > exponentStart else { throw failure("expected a digit in the exponent") }
            exponent += exponentNegative ? -e : e
        }

        if exact && isInteger {
            if !negative && significand <= UInt64(Int64.max) {
                return JSONNumber(doubleValue: Double(significand), exact: .int(Int64(significand)))
            }
            if !negative { return JSONNumber(doubleValue: Double(significand), exact: .uint(significand)) }
            if significand <= UInt64(Int64.max) + 1 {
                return JSONNumber(doubleValue: -Double(significand), exact: .int(Int64(bitPattern: 0 &- significand)))
            }
        }
        if exact && !isInteger, let exponent32 = Int32(exactly: exponent) {
            var significand = significand, exponent32 = exponent32
            while significand != 0 && significand % 10 == 0 { significand /= 10; exponent32 += 1 }
            if significand == 0 { exponent32 = 0 }
            let exactForm = JSONNumber.Exact.decimal(negative: negative, significand: significand, exponent: exponent32)
            // Clinger's fast path: a significand and a power of ten both exact in a Double, so one
            // correctly rounded multiplication or division gives the correctly rounded value.
            let e = Int(exponent32)
            if significand <= 1 << 53, (-22...22).contains(e) {
                let m = Double(significand)
                let magnitude = e >= 0 ? m * exactPowersOfTen[e] : m / exactPowersOfTen[-e]
                return JSONNumber(doubleValue: negative ? -magnitude : magnitude, exact: exactForm)
            }
            return JSONNumber(doubleValue: try double(numberText(from: start), at: start), exact: exactForm)
        }
        let text = numberText(from: start)
        if isInteger, !negative, let u = UInt64(text) {
            return JSONNumber(doubleValue: Double(u), exact: .uint(u))
        }
        return JSONNumber(doubleValue: try double(text, at: start), exact: .text(text))
    }

    func numberText(from start: Int) -> String {
        String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
    }

    /// Swift's Double(String), which rounds correctly, for what the fast path does not cover.
    func double(_ text: String, at start: Int) throws -> Double {
        guard let d = Double(text) else { throw failure("number out of range", at: start) }
        return d
    }
}
