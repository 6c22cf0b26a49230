import Foundation
import MAEFormats
import XCTest

/// One safetensors fixture of the dense scripts: tensors named "<case>/<tensor>".
struct DenseFixture {
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

    func has(_ key: String) -> Bool { file.tensors[key] != nil }
}
