import Foundation
import MAEFormats
import XCTest

/// One safetensors fixture of a test bundle: tensors named "<case>/<tensor>" (the fixture scripts'
/// layout). Each test target opens its own with `SafeTensorsFixture(name, bundle: .module)`.
public struct SafeTensorsFixture {
    public let name: String
    private let file: SafeTensors

    public init(_ name: String, bundle: Bundle) throws {
        let url = try XCTUnwrap(bundle.url(forResource: "Fixtures/" + name, withExtension: "safetensors"),
                                "Fixtures/\(name).safetensors is missing from the test bundle")
        self.name = name
        file = try SafeTensors.read(contentsOf: url)
    }

    public func floats(_ key: String) throws -> [Float] {
        try XCTUnwrap(file.tensors[key], "\(name) has no tensor \(key)").floats
    }

    public func shape(_ key: String) throws -> [Int] {
        try XCTUnwrap(file.tensors[key], "\(name) has no tensor \(key)").shape
    }

    /// A group's sizes stored as "<group>/sizes" (int64).
    public func sizes(_ group: String) throws -> [Int] {
        try XCTUnwrap(file.tensors[group + "/sizes"], "\(name) has no sizes for \(group)").int64s.map { Int($0) }
    }

    /// True when the fixture holds a tensor of that name.
    public func has(_ key: String) -> Bool { file.tensors[key] != nil }

    /// Every tensor name in the file.
    public var keys: [String] { Array(file.tensors.keys) }
}
