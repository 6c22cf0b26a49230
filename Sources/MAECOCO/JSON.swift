// A small JSON reader and writer for COCO files.
//
// Why not JSONSerialization: on Linux it returns long decimals such as 0.35000000000000003 as
// NSDecimalNumber whose doubleValue is off by several ulps, which moves box IoUs away from
// pycocotools'; numbers here go through strtod (correctly rounded, as Python's json). It is also
// faster on results files with hundreds of thousands of detections.
import Foundation

/// A parsed JSON value.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Parses UTF-8 JSON text; the error says what went wrong and at which byte.
    public static func parse(_ data: Data) throws -> JSONValue {
        try data.withUnsafeBytes { raw in
            var parser = JSONParser(bytes: raw.bindMemory(to: UInt8.self))
            parser.skipSpace()
            let value = try parser.value(depth: 0)
            parser.skipSpace()
            if parser.position != parser.bytes.count { throw parser.failure("unexpected text after the value") }
            return value
        }
    }

    /// Compact JSON text (object keys sorted, numbers in the shortest form that reads back exactly).
    public func serialized() -> String {
        var out = ""
        write(to: &out)
        return out
    }

    private func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let d):
            if !d.isFinite {
                out += "null"
            } else if d == d.rounded(), abs(d) < 1e15 {
                out += String(Int(d))
            } else {
                out += "\(d)"
            }
        case .string(let s): writeString(s, to: &out)
        case .array(let a):
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += "," }
                v.write(to: &out)
            }
            out += "]"
        case .object(let o):
            out += "{"
            for (i, key) in o.keys.sorted().enumerated() {
                if i > 0 { out += "," }
                writeString(key, to: &out)
                out += ":"
                o[key]!.write(to: &out)
            }
            out += "}"
        }
    }

    private func writeString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 {
                    out += String(format: "\\u%04x", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        out += "\""
    }
}

/// A JSON syntax error at a byte offset.
struct JSONSyntaxError: Error {
    var message: String
}

/// Recursive-descent parser over the bytes of a document.
private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    var position = 0

    init(bytes: UnsafeBufferPointer<UInt8>) {
        self.bytes = bytes
    }

    func failure(_ message: String) -> JSONSyntaxError {
        JSONSyntaxError(message: "\(message) at byte \(position)")
    }

    mutating func skipSpace() {
        while position < bytes.count {
            let c = bytes[position]
            if c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { position += 1 } else { break }
        }
    }

    mutating func value(depth: Int) throws -> JSONValue {
        guard depth < 512 else { throw failure("nesting too deep") }
        guard position < bytes.count else { throw failure("unexpected end of file") }
        switch bytes[position] {
        case UInt8(ascii: "{"):
            position += 1
            var object: [String: JSONValue] = [:]
            skipSpace()
            if position < bytes.count && bytes[position] == UInt8(ascii: "}") { position += 1; return .object(object) }
            while true {
                skipSpace()
                guard position < bytes.count, bytes[position] == UInt8(ascii: "\"") else {
                    throw failure("expected a string key")
                }
                let key = try string()
                skipSpace()
                try expect(UInt8(ascii: ":"))
                skipSpace()
                object[key] = try value(depth: depth + 1)
                skipSpace()
                if try endOrComma(UInt8(ascii: "}")) { return .object(object) }
            }
        case UInt8(ascii: "["):
            position += 1
            var array: [JSONValue] = []
            skipSpace()
            if position < bytes.count && bytes[position] == UInt8(ascii: "]") { position += 1; return .array(array) }
            while true {
                skipSpace()
                array.append(try value(depth: depth + 1))
                skipSpace()
                if try endOrComma(UInt8(ascii: "]")) { return .array(array) }
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"):
            try literal("true"); return .bool(true)
        case UInt8(ascii: "f"):
            try literal("false"); return .bool(false)
        case UInt8(ascii: "n"):
            try literal("null"); return .null
        default:
            return .number(try number())
        }
    }

    mutating func expect(_ c: UInt8) throws {
        guard position < bytes.count, bytes[position] == c else {
            throw failure("expected '\(Character(Unicode.Scalar(c)))'")
        }
        position += 1
    }

    /// After a member: true at the closing bracket, false after a comma.
    mutating func endOrComma(_ close: UInt8) throws -> Bool {
        guard position < bytes.count else { throw failure("unexpected end of file") }
        if bytes[position] == close { position += 1; return true }
        if bytes[position] == UInt8(ascii: ",") { position += 1; return false }
        throw failure("expected ',' or '\(Character(Unicode.Scalar(close)))'")
    }

    mutating func literal(_ word: StaticString) throws {
        let n = word.utf8CodeUnitCount
        guard position + n <= bytes.count else { throw failure("unexpected end of file") }
        for i in 0..<n where bytes[position + i] != word.utf8Start[i] { throw failure("invalid literal") }
        position += n
    }

    mutating func number() throws -> Double {
        let start = position
        var isInteger = true
        while position < bytes.count {
            let c = bytes[position]
            if (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") {
                position += 1
            } else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
                isInteger = false
                position += 1
            } else {
                break
            }
        }
        let length = position - start
        guard length > 0 else { throw failure("unexpected character") }
        // Short integers exactly, without strtod.
        if isInteger && length < 16 {
            var negative = false, i = start, v = 0
            if bytes[i] == UInt8(ascii: "-") { negative = true; i += 1 }
            guard i < position else { throw failure("invalid number") }
            while i < position {
                let d = bytes[i]
                guard d >= 0x30 && d <= 0x39 else { throw failure("invalid number") }
                v = v * 10 + Int(d - 0x30)
                i += 1
            }
            return Double(negative ? -v : v)
        }
        guard length < 64 else { throw failure("number too long") }
        var buffer = [CChar](repeating: 0, count: length + 1)
        for i in 0..<length { buffer[i] = CChar(bitPattern: bytes[start + i]) }
        return try buffer.withUnsafeBufferPointer { b -> Double in
            var end: UnsafeMutablePointer<CChar>? = nil
            let value = strtod(b.baseAddress!, &end)
            guard let end, end - UnsafeMutablePointer(mutating: b.baseAddress!) == length else {
                throw failure("invalid number")
            }
            return value
        }
    }

    mutating func string() throws -> String {
        position += 1  // opening quote
        let start = position
        // Fast path: no escapes.
        while position < bytes.count {
            let c = bytes[position]
            if c == UInt8(ascii: "\"") {
                let s = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<position]), as: UTF8.self)
                position += 1
                return s
            }
            if c == UInt8(ascii: "\\") { break }
            position += 1
        }
        var utf8 = Array(bytes[start..<position])
        while position < bytes.count {
            let c = bytes[position]
            position += 1
            if c == UInt8(ascii: "\"") { return String(decoding: utf8, as: UTF8.self) }
            guard c == UInt8(ascii: "\\") else { utf8.append(c); continue }
            guard position < bytes.count else { break }
            let e = bytes[position]
            position += 1
            switch e {
            case UInt8(ascii: "n"): utf8.append(0x0A)
            case UInt8(ascii: "t"): utf8.append(0x09)
            case UInt8(ascii: "r"): utf8.append(0x0D)
            case UInt8(ascii: "b"): utf8.append(0x08)
            case UInt8(ascii: "f"): utf8.append(0x0C)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if code >= 0xD800 && code < 0xDC00, position + 1 < bytes.count,
                   bytes[position] == UInt8(ascii: "\\"), bytes[position + 1] == UInt8(ascii: "u") {
                    position += 2
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low &- 0xDC00)
                }
                utf8.append(contentsOf: String(Unicode.Scalar(code).map(Character.init) ?? "\u{FFFD}").utf8)
            default: utf8.append(e)  // \" \\ \/
            }
        }
        throw failure("unterminated string")
    }

    mutating func hex4() throws -> UInt32 {
        guard position + 4 <= bytes.count else { throw failure("bad \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            guard let d = Character(Unicode.Scalar(bytes[position])).hexDigitValue else { throw failure("bad \\u escape") }
            v = v * 16 + UInt32(d)
            position += 1
        }
        return v
    }
}
