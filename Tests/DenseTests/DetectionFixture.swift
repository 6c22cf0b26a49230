import Foundation
import MAEDense
import MAEFormats
import XCTest

/// scripts/make_detection_fixtures.py's file: tensors named "<case>/<tensor>", float32 or int64.
struct DetectionFixture {
    private let file: SafeTensors

    init() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/detection", withExtension: "safetensors"),
                                "Fixtures/detection.safetensors is missing from the test bundle")
        file = try SafeTensors.read(contentsOf: url)
    }

    func tensor(_ key: String) throws -> StoredTensor { try XCTUnwrap(file.tensors[key], "detection fixture has no \(key)") }
    func floats(_ key: String) throws -> [Float] { try tensor(key).floats }
    func ints(_ key: String) throws -> [Int] { try tensor(key).int64s.map { Int($0) } }
    func shape(_ key: String) throws -> [Int] { try tensor(key).shape }

    /// An (N, 4) tensor as XYXY boxes.
    func boxes(_ key: String) throws -> [Box] {
        let v = try floats(key)
        return stride(from: 0, to: v.count, by: 4).map { Box(xyxy: Array(v[$0..<($0 + 4)])) }
    }
}

/// Boxes flattened to their coordinates, for `assertClose`.
func coordinates(_ boxes: [Box]) -> [Float] { boxes.flatMap(\.values) }
