// The shared JSON reader and writer (MAEJSON). Expected Doubles are the bit patterns of Python's
// json.loads (correctly rounded), printed by:
//   python -c "import json,struct; print(hex(struct.unpack('<Q', struct.pack('<d', json.loads(T)))[0]))"
import Foundation
import MAEJSON
import XCTest

final class JSONTests: XCTestCase {
    func testObjectsKeepKeyOrderAndFindKeys() throws {
        let text = #"{"b":1,"a":{"z":0,"y":[true,false,null]},"c":"x"}"#
        let value = try JSONValue.parse(text)
        XCTAssertEqual(value.objectValue?.keys, ["b", "a", "c"])
        XCTAssertEqual(value["a"]?.objectValue?.keys, ["z", "y"])
        XCTAssertEqual(value["a"]?["y"]?.arrayValue, [.bool(true), .bool(false), .null])
        XCTAssertEqual(value["c"]?.stringValue, "x")
        XCTAssertNil(value["missing"])
        XCTAssertEqual(value.serialized(), text)

        // Large objects (hash-indexed) too; a repeated key stays in the members, lookups see its last value.
        let keys = (0..<40).map { "k\(39 - $0)" }
        let big = try JSONValue.parse("{" + keys.map { "\"\($0)\":\($0.dropFirst())" }.joined(separator: ",") + #","k7":"again"}"#)
        let object = try XCTUnwrap(big.objectValue)
        XCTAssertEqual(object.keys, keys + ["k7"])
        XCTAssertEqual(object["k0"]?.intValue, 0)
        XCTAssertEqual(object["k39"]?.intValue, 39)
        XCTAssertEqual(object["k7"]?.stringValue, "again")
        XCTAssertEqual(try JSONValue.parse(#"{"a":1,"a":2}"#)["a"]?.intValue, 2)

        var edited: JSONObject = ["x": .int(1)]
        edited["y"] = .int(2)
        edited["x"] = .int(3)
        XCTAssertEqual(JSONValue.object(edited).serialized(), #"{"x":3,"y":2}"#)
        edited["x"] = nil
        XCTAssertEqual(edited.keys, ["y"])
    }

    func testIntegersBeyondDoublePrecisionAreExact() throws {
        let value = try JSONValue.parse("[9007199254740993,-9223372036854775808,18446744073709551615,123456789012345678901234567890,-0]")
        let n = try XCTUnwrap(value.arrayValue)
        XCTAssertEqual(n[0].intValue, 9_007_199_254_740_993)
        XCTAssertEqual(n[0].doubleValue?.bitPattern, 0x4340_0000_0000_0000)
        XCTAssertEqual(n[1].intValue, Int.min)
        XCTAssertNil(n[2].intValue)
        guard case .number(let big) = n[2], case .number(let huge) = n[3] else { return XCTFail("not numbers") }
        XCTAssertEqual(big.uint64Value, UInt64.max)
        XCTAssertNil(huge.intValue)
        XCTAssertEqual(huge.doubleValue.bitPattern, 0x45f8_ee90_ff6c_373e)
        XCTAssertEqual(n[4].intValue, 0)
        XCTAssertEqual(n[4].doubleValue?.sign, .minus)
        XCTAssertEqual(value.serialized(), "[9007199254740993,-9223372036854775808,18446744073709551615,123456789012345678901234567890,0]")
        // Sizes and offsets must be integers as written.
        XCTAssertNil(try JSONValue.parse("1.0").intValue)
        XCTAssertNil(try JSONValue.parse("1e2").intValue)
    }

    func testDecimalsAreCorrectlyRounded() throws {
        // 0.35000000000000003 is one JSONSerialization on Linux reads several ulps off; the rest cover
        // the fast path, 17 digits, more than 19 digits, a tie, subnormals and both ends of the range.
        let cases: [(String, UInt64)] = [
            ("0.35000000000000003", 0x3fd6_6666_6666_6667),
            ("0.1", 0x3fb9_9999_9999_999a),
            ("312.4766540527344", 0x4073_87a0_6000_0000),
            ("0.37112697553450313", 0x3fd7_c08b_5ba5_619e),
            ("0.30000000000000004441", 0x3fd3_3333_3333_3334),
            ("1.00000000000000011102230246251565404236316680908203125", 0x3ff0_0000_0000_0000),
            ("2.2250738585072011e-308", 0x000f_ffff_ffff_ffff),
            ("4.9e-324", 0x0000_0000_0000_0001),
            ("1.7976931348623157e308", 0x7fef_ffff_ffff_ffff),
            ("1e400", 0x7ff0_0000_0000_0000),
            ("-1e-400", 0x8000_0000_0000_0000),
        ]
        for (text, bits) in cases {
            let d = try XCTUnwrap(JSONValue.parse(text).doubleValue, text)
            XCTAssertEqual(d.bitPattern, bits, "\(text) read as \(d)")
        }
    }

    func testNestingLimit() throws {
        XCTAssertNoThrow(try JSONValue.parse(#"[{"a":[1]}]"#, maxDepth: 3))
        assertSyntaxError(#"[{"a":[[1]]}]"#, maxDepth: 3, at: 7, "nesting deeper than 3 levels")
        let deep = String(repeating: "[", count: 512) + String(repeating: "]", count: 512)
        XCTAssertNoThrow(try JSONValue.parse(deep))
        assertSyntaxError(String(repeating: "[", count: 100_000), at: 512, "nesting deeper than 512 levels")
    }

    func testMalformedTextReportsTheByte() {
        let cases: [(String, Int, String)] = [
            ("", 0, "unexpected end of text"),
            (#"{"a":1,}"#, 7, "expected a string key"),
            (#"{"a" 1}"#, 5, "expected ':'"),
            ("[1 2]", 3, "expected ',' or ']'"),
            ("[1] x", 4, "unexpected text after the JSON value"),
            ("01", 0, "leading zero"),
            ("[1.]", 3, "expected a digit after '.'"),
            ("-", 1, "expected a digit"),
            ("1e+", 3, "expected a digit in the exponent"),
            ("tru", 0, "unexpected end of text"),
            ("nul!", 0, "expected 'null'"),
            ("[+1]", 1, "expected a value"),
            ("\"ab\u{1}\"", 3, "control character"),
            (#""a\x""#, 2, "unknown escape"),
            (#"["\ud800"]"#, 2, "unpaired surrogate"),
            (#""\u12g4""#, 5, "bad hex digit"),
            ("\"abc", 4, "unterminated string"),
        ]
        for (text, offset, message) in cases { assertSyntaxError(text, at: offset, message) }
        // Invalid UTF-8 inside a string: the offset is the string's first byte.
        XCTAssertThrowsError(try JSONValue.parse([UInt8(ascii: "["), 0x22, 0x61, 0xFF, 0x22, UInt8(ascii: "]")])) {
            XCTAssertEqual($0 as? JSONSyntaxError, JSONSyntaxError(message: "a string that is not valid UTF-8", offset: 2))
        }
    }

    func testSerializedTextReadsBackTheSameValue() throws {
        let parsed = try JSONValue.parse(#"[1.50, 1e2, -0.0, 0.35000000000000003, 1.5e-7, 2E+30, "\u00e9\ud83d\ude00\/"]"#)
        XCTAssertEqual(parsed.serialized(), #"[1.5,100.0,-0.0,0.35000000000000003,1.5e-7,2e30,"é😀/"]"#)
        let built: JSONValue = .object([
            "ints": .array([.int(0), .int(-7), .int(Int.max)]),
            "doubles": .array([.double(3), .double(-0.0), .double(0.1), .double(1e-7), .double(1e300),
                               .double(0.35000000000000003), .double(2.5e15)]),
            "not finite": .array([.double(.infinity), .double(.nan)]),
            "text": .string("quote\" backslash\\ newline\n tab\t bell\u{7} é"),
            "parsed": parsed,
            "empty": .object([:]), "none": .array([]), "flags": .array([.bool(true), .null]),
        ])
        let text = built.serialized()
        XCTAssertTrue(text.contains(#""doubles":[3,0,0.1,1e-07,1e+300,0.35000000000000003,2500000000000000.0]"#), text)
        XCTAssertTrue(text.contains(#""not finite":[null,null]"#), text)
        XCTAssertTrue(text.contains(#""text":"quote\" backslash\\ newline\n tab\t bell\u0007 é""#), text)
        let back = try JSONValue.parse(text)
        XCTAssertEqual(back.objectValue?.keys, built.objectValue?.keys)
        XCTAssertEqual(back["parsed"], parsed)
        XCTAssertEqual(back["text"], built["text"])
        XCTAssertEqual(back["ints"], built["ints"])
        XCTAssertEqual(back["doubles"]?.arrayValue?.map { $0.doubleValue!.bitPattern },
                       built["doubles"]?.arrayValue?.map { $0.doubleValue!.bitPattern == (-0.0).bitPattern ? 0 : $0.doubleValue!.bitPattern })
        XCTAssertEqual(back["doubles"], built["doubles"])
        XCTAssertEqual(try JSONValue.parse(back.serialized()), back)
    }

    func testNumbersCompareByValue() throws {
        XCTAssertEqual(try JSONValue.parse("1"), try JSONValue.parse("1.0"))
        XCTAssertEqual(try JSONValue.parse("[1.50]"), try JSONValue.parse("[15e-1]"))
        XCTAssertEqual(try JSONValue.parse("0.35000000000000003"), .double(0.35000000000000003))
        XCTAssertNotEqual(try JSONValue.parse("0.1"), try JSONValue.parse("0.10000000000000001"))
        XCTAssertNotEqual(try JSONValue.parse(#"{"a":1,"b":2}"#), try JSONValue.parse(#"{"b":2,"a":1}"#))
    }

    private func assertSyntaxError(_ text: String, maxDepth: Int = 512, at offset: Int, _ message: String,
                                   file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try JSONValue.parse(text, maxDepth: maxDepth), text, file: file, line: line) { error in
            guard let e = error as? JSONSyntaxError else {
                return XCTFail("\(text): unexpected error \(error)", file: file, line: line)
            }
            XCTAssertEqual(e.offset, offset, "\(text): \(e)", file: file, line: line)
            XCTAssertTrue(e.message.contains(message), "\(text): \(e)", file: file, line: line)
        }
    }
}
