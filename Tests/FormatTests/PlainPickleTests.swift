import Foundation
import XCTest
@testable import MAEFormats
import TestSupport

/// detectron2 model-zoo `.pkl` files: plain pickles of numpy arrays (scripts/make_pkl_fixtures.py).
final class PlainPickleTests: XCTestCase {
    private let variants = ["d2_numpy2_p4.pkl", "d2_numpy2_p5.pkl", "d2_numpy1_p2.pkl", "d2_python2.pkl"]

    func testEveryProtocolAndNumpyVersionRebuildsTheSameArrays() throws {
        let expect = try SafeTensors.read(contentsOf: formatFixture("d2_expect.safetensors"))
        for name in variants {
            let file = try CheckpointFile.open(formatFixture(name))
            XCTAssertEqual(file.format, .pickle, name)
            XCTAssertEqual(file.wrapper, "model", name)
            XCTAssertEqual(file.placeholders, [], name)
            let extras = Dictionary(uniqueKeysWithValues: file.extras.map { ($0.key, $0.value) })
            XCTAssertEqual(extras["__author__"]?.summary(), "Detectron2 Model Zoo", name)
            XCTAssertEqual(extras["matching_heuristics"]?.summary(), "True", name)
            let arrays = expect.order.filter { !$0.hasSuffix("_as_i64") }
            XCTAssertEqual(Set(file.order), Set(arrays), name)
            XCTAssertEqual(file.order.first, "backbone.net.pos_embed", "\(name): file order kept")
            for key in arrays {
                let t = try XCTUnwrap(file.tensors[key], "\(name) \(key)")
                // The expected 0-d array is stored with shape [1]; its own shape is checked below.
                if key != "scale" { XCTAssertEqual(t.shape, expect.tensors[key]!.shape, "\(name) \(key)") }
                assertBitwiseEqual(t.floats, expect.tensors[key]!.floats, "\(name) \(key)")
            }
            let types = file.tensors.mapValues(\.dtype)
            XCTAssertEqual(types["roi_heads.box_head.conv1.norm.bias"], .f64, name)
            XCTAssertEqual(types["roi_heads.box_predictor.bbox_pred.bias"], .f32, "\(name): big-endian swapped")
            XCTAssertEqual(types["steps"], .i64, name)
            XCTAssertEqual(types["counts"], .i32, name)
            XCTAssertEqual(types["pixels"], .u8, name)
            XCTAssertEqual(types["flags"], .bool, name)
            XCTAssertEqual(file.tensors["scale"]?.shape, [], "\(name): 0-d array")
            XCTAssertEqual(file.tensors["steps"]?.int64s, expect.tensors["steps_as_i64"]!.int64s, name)
            XCTAssertEqual(file.tensors["counts"]?.int64s, expect.tensors["counts_as_i64"]!.int64s, name)
        }
    }

    func testFortranOrderIsTransposedToRowMajor() throws {
        let file = try CheckpointFile.open(formatFixture("d2_numpy2_p5.pkl"))
        let c = try XCTUnwrap(file.tensors["roi_heads.box_predictor.cls_score.weight"])
        let expect = try SafeTensors.read(contentsOf: formatFixture("d2_expect.safetensors"))
        XCTAssertEqual(c.shape, [3, 4])
        // Row 1 of the row-major result is elements 4..<8; a Fortran reading would give 1, 4, 7, 10.
        assertBitwiseEqual(Array(c.floats[4..<8]), Array(expect.tensors["roi_heads.box_predictor.cls_score.weight"]!.floats[4..<8]), "row 1")
    }

    func testMalformedArraysThrowOneSentence() throws {
        let good = try Data(contentsOf: formatFixture("d2_numpy1_p2.pkl"))
        // An unsupported type code: 'f4' -> 'c8' (complex64) keeps every length intact.
        let complex = good.replacingFirst(Data("f4".utf8), with: Data("c8".utf8))
        assertFormatError("c.pkl", "type 'c8'") { try PlainPickle.parse(complex, source: "c.pkl") }
        // A truncated file.
        assertFormatError("t.pkl", "malformed") { try PlainPickle.parse(good.prefix(good.count / 2), source: "t.pkl") }
        // Not a pickle at all.
        assertFormatError("n.pkl", "not a pickle") { try PlainPickle.parse(Data("hello".utf8), source: "n.pkl") }
    }

    func testCorruptedPicklesNeverCrash() throws {
        let good = try Data(contentsOf: formatFixture("d2_numpy2_p4.pkl"))
        var generator = SystemRandomNumberGenerator()
        var failures = 0
        for _ in 0..<300 {
            var bad = good
            bad[Int.random(in: 2..<bad.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            if (try? PlainPickle.parse(bad, source: "x")) == nil { failures += 1 }
        }
        for cut in stride(from: 2, to: good.count, by: 37) where (try? PlainPickle.parse(good.prefix(cut), source: "x")) == nil {
            failures += 1
        }
        XCTAssertGreaterThan(failures, 0)
    }
}

private extension Data {
    func replacingFirst(_ needle: Data, with replacement: Data) -> Data {
        guard let range = range(of: needle) else { return self }
        var out = self
        out.replaceSubrange(range, with: replacement)
        return out
    }
}
