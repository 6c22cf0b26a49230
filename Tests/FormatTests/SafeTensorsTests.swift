import Foundation
import XCTest
@testable import MAEFormats
import TestSupport

final class SafeTensorsTests: XCTestCase {
    func testReadsSharedMAEFixture() throws {
        let file = try SafeTensors.read(contentsOf: TestSupport.fixtureURL("mae_tiny.safetensors"))
        XCTAssertEqual(file.order.count, file.tensors.count)
        XCTAssertEqual(file.tensors["pos_embed"]?.shape, [1, 17, 64])
        XCTAssertEqual(file.tensors["patch_embed.proj.weight"]?.shape, [64, 3, 8, 8])
        XCTAssertEqual(file.tensors["blocks.1.attn.qkv.weight"]?.shape, [192, 64])
        XCTAssertEqual(file.tensors["decoder_pred.weight"]?.shape, [192, 32])
        XCTAssertEqual(file.tensors["expect.ids_restore"]?.dtype, .i64)
        XCTAssertTrue(file.metadata["config"]?.contains("\"heads\": 4") ?? false)
        // Fixed sin-cos pos_embed: row 0 (the cls position) is zeros, row 1 is not.
        let pos = try XCTUnwrap(file.tensors["pos_embed"]).floats
        XCTAssertEqual(Array(pos[0..<64]), [Float](repeating: 0, count: 64))
        XCTAssertNotEqual(Array(pos[64..<128]), [Float](repeating: 0, count: 64))
        // The ids are a permutation of 0..<16 for each image.
        let ids = try XCTUnwrap(file.tensors["expect.ids_restore"]).int64s
        XCTAssertEqual(ids[0..<16].sorted(), (0..<16).map(Int64.init))
    }

    func testHeaderOrderIsKept() throws {
        let data = try Data(contentsOf: TestSupport.fixtureURL("mae_tiny.safetensors"))
        let file = try SafeTensors.parse(data, source: "mae_tiny")
        XCTAssertEqual(Array(file.order.prefix(3)),
                       ["expect.ids_restore", "blocks.0.attn.proj.bias", "blocks.0.attn.proj.weight"])
    }

    func testEveryDTypeConvertsLikeTorch() throws {
        let file = try SafeTensors.read(contentsOf: formatFixture("dtypes.safetensors"))
        let expect = try SafeTensors.read(contentsOf: formatFixture("dtypes_expect.safetensors"))
        for name in ["f64", "f32", "f16", "bf16", "i64", "i32", "i16", "i8", "u8", "bool"] {
            let t = try XCTUnwrap(file.tensors[name], name)
            XCTAssertEqual(t.dtype.rawValue.lowercased(), name)
            assertBitwiseEqual(t.floats, try XCTUnwrap(expect.tensors[name]).floats, name)
        }
        for name in ["i64", "i32", "i16", "i8", "u8"] {
            XCTAssertEqual(file.tensors[name]!.int64s, expect.tensors[name + "_as_i64"]!.int64s, name)
        }
        XCTAssertEqual(file.tensors["f32"]!.int64s.prefix(5), [0, 0, 1, -2, 3])
        XCTAssertEqual(file.tensors["matrix"]!.shape, [2, 3, 4])
        XCTAssertEqual(file.tensors["matrix"]!.floats, (0..<24).map(Float.init))
        XCTAssertEqual(file.tensors["scalar"]!.shape, [])
        XCTAssertEqual(file.tensors["scalar"]!.floats, [2.5])
        XCTAssertEqual(file.tensors["empty"]!.shape, [0, 3])
        XCTAssertEqual(file.tensors["empty"]!.count, 0)
        XCTAssertEqual(file.metadata, ["note": "all dtypes", "quote": "a \"b\"\n"])
    }

    func testRoundTripKeepsBytesOrderAndMetadata() throws {
        let original = try SafeTensors.read(contentsOf: formatFixture("dtypes.safetensors"))
        var copy = original
        copy.metadata["config"] = "{\"dim\": 64, \"name\": \"ü ✓ \\u0001\"}"
        let data = try copy.serialized()
        // Writers align the data to 8 bytes.
        let headerLength = data.prefix(8).withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
        XCTAssertEqual(headerLength % 8, 0)
        let back = try SafeTensors.parse(data, source: "roundtrip")
        XCTAssertEqual(back.order, original.order)
        XCTAssertEqual(back.metadata, copy.metadata)
        for name in original.order {
            XCTAssertEqual(back.tensors[name]!.bytes, original.tensors[name]!.bytes, name)
            XCTAssertEqual(back.tensors[name]!.shape, original.tensors[name]!.shape, name)
            XCTAssertEqual(back.tensors[name]!.dtype, original.tensors[name]!.dtype, name)
        }
    }

    func testAtomicWriteReplacesAndLeavesNoTemporaryFile() throws {
        let folder = try makeTempFolder()
        defer { try? FileManager.default.removeItem(at: folder) }
        let url = folder.appendingPathComponent("features.safetensors")
        let a = SafeTensors(tensors: [("features", StoredTensor(shape: [2, 2], floats: [1, 2, 3, 4])),
                                      ("labels", StoredTensor(shape: [2], int64s: [7, -1]))],
                            metadata: ["method": "mae"])
        try a.write(to: url)
        var b = a
        b.set("features", StoredTensor(shape: [1, 2], floats: [5, 6]))
        try b.write(to: url)
        let back = try SafeTensors.read(contentsOf: url)
        XCTAssertEqual(back.order, ["features", "labels"])
        XCTAssertEqual(back.tensors["features"]!.floats, [5, 6])
        XCTAssertEqual(back.tensors["labels"]!.int64s, [7, -1])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: folder.path), ["features.safetensors"])
        assertFormatError("nope/x.safetensors", "cannot write") {
            try a.write(to: folder.appendingPathComponent("nope/x.safetensors"))
        }
    }

    /// A file with the given JSON header and `dataBytes` zero bytes of data.
    private func file(header: String, dataBytes: Int = 16, headerLength: UInt64? = nil) -> Data {
        let json = Array(header.utf8)
        var d = Data()
        withUnsafeBytes(of: (headerLength ?? UInt64(json.count)).littleEndian) { d.append(contentsOf: $0) }
        d.append(contentsOf: json)
        d.append(Data(count: dataBytes))
        return d
    }

    func testHostileFilesThrowOneSentenceNamingTheFile() {
        let ok = #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#
        XCTAssertNoThrow(try SafeTensors.parse(file(header: ok), source: "bad.st"))
        let cases: [(Data, String)] = [
            (Data(), "empty"),
            (Data([1, 2, 3]), "too short"),
            (file(header: ok, headerLength: 1 << 62), "exceeds"),
            (file(header: ok, headerLength: UInt64.max), "exceeds"),
            (file(header: "{\"a\":", dataBytes: 0), "malformed"),
            (file(header: "[1,2]"), "not an object"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}"# + String(repeating: "[", count: 100000)), "malformed"),
            (file(header: #"{"a":{"dtype":"Q8","shape":[2,2],"data_offsets":[0,16]}}"#), "unsupported dtype"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2,-2],"data_offsets":[0,16]}}"#), "non-negative"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,16]}}"#), "non-negative"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,32]}}"#), "outside"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[8,4]}}"#), "outside"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,99999999999999999999999]}}"#), "data_offsets"),
            (file(header: #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,16]}}"#), "span 16 bytes"),
            (file(header: #"{"a":{"dtype":"F32","shape":[4611686018427387904,4],"data_offsets":[0,16]}}"#), "too many"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#), "overlap"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#), "twice"),
            (file(header: #"{"__metadata__":{"k":3}}"#), "not a string"),
            (file(header: #"{"a":{"dtype":"F32","shape":[2,2]}}"#), "data_offsets"),
            (file(header: "{\"a\":\"\u{1}\"}"), "malformed"),
        ]
        for (data, fragment) in cases {
            assertFormatError("bad.st", fragment) { try SafeTensors.parse(data, source: "bad.st") }
        }
    }

    func testMissingFileIsOneSentence() {
        assertFormatError("/no/such/file.safetensors", "no such file") {
            try SafeTensors.read(contentsOf: URL(fileURLWithPath: "/no/such/file.safetensors"))
        }
    }
}
