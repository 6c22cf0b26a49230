import Foundation
import MAEFormats
import XCTest

/// One safetensors fixture of scripts/make_attention_fixtures.py: tensors named "<case>/<tensor>",
/// with each case's sizes in "<case>/sizes" (int64).
struct AttentionFixture {
    let name: String
    private let file: SafeTensors

    init(_ name: String) throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/" + name, withExtension: "safetensors"),
                                "Fixtures/\(name).safetensors is missing from the test bundle")
        self.name = name
        file = try SafeTensors.read(contentsOf: url)
    }

    func floats(_ key: String) throws -> [Float] {
        try XCTUnwrap(file.tensors[key], "\(name) has no tensor \(key)").floats
    }

    func shape(_ key: String) throws -> [Int] {
        try XCTUnwrap(file.tensors[key], "\(name) has no tensor \(key)").shape
    }

    func sizes(_ group: String) throws -> [Int] {
        try XCTUnwrap(file.tensors[group + "/sizes"], "\(name) has no sizes for \(group)").int64s.map { Int($0) }
    }

    /// True when the fixture holds a tensor of that name.
    func has(_ key: String) -> Bool { file.tensors[key] != nil }
}
