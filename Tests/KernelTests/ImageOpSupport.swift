import Foundation
import XCTest

/// One PyTorch reference case from Fixtures/image_ops.json (written by scripts/make_kernel_fixtures.py):
/// an op, its configuration (integer lists; flags as 0/1) and named float32 tensors in image_ops.bin.
struct ImageOpCase: Decodable {
    struct Ref: Decodable { let offset: Int; let shape: [Int] }
    let op: String
    let name: String
    let config: [String: [Int]]
    let tensors: [String: Ref]
}

/// The image-op fixtures, loaded once.
final class ImageOpFixtures {
    private struct Index: Decodable { let cases: [ImageOpCase] }
    let cases: [ImageOpCase]
    private let values: [Float]

    static func load() throws -> ImageOpFixtures {
        let json = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/image_ops", withExtension: "json"),
                                 "Fixtures/image_ops.json is missing from the test bundle")
        let bin = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/image_ops", withExtension: "bin"),
                                "Fixtures/image_ops.bin is missing from the test bundle")
        let index = try JSONDecoder().decode(Index.self, from: Data(contentsOf: json))
        let bytes = try Data(contentsOf: bin)
        var values = [Float](repeating: 0, count: bytes.count / 4)
        _ = values.withUnsafeMutableBytes { bytes.copyBytes(to: $0) }
        return ImageOpFixtures(cases: index.cases, values: values.map { Float(bitPattern: $0.bitPattern.littleEndian) })
    }

    private init(cases: [ImageOpCase], values: [Float]) { self.cases = cases; self.values = values }

    func cases(_ op: String) -> [ImageOpCase] { cases.filter { $0.op == op } }

    func tensor(_ c: ImageOpCase, _ name: String) throws -> [Float] {
        let ref = try XCTUnwrap(c.tensors[name], "\(c.op)/\(c.name) has no tensor \(name)")
        let n = ref.shape.reduce(1, *)
        return Array(values[ref.offset..<ref.offset + n])
    }

    func shape(_ c: ImageOpCase, _ name: String) throws -> [Int] {
        try XCTUnwrap(c.tensors[name], "\(c.op)/\(c.name) has no tensor \(name)").shape
    }
}

extension ImageOpCase {
    func ints(_ key: String) throws -> [Int] { try XCTUnwrap(config[key], "\(op)/\(name) has no \(key)") }

    func pair(_ key: String) throws -> (Int, Int) {
        let v = try ints(key)
        XCTAssertEqual(v.count, 2, "\(op)/\(name): \(key)")
        return (v[0], v[1])
    }

    func flag(_ key: String) throws -> Bool { try ints(key) == [1] }
}

/// Central differences of a scalar loss, taken in Double: d loss / d x[i] ~ (L(x + h e_i) - L(x - h e_i)) / 2h.
func numericGradient(_ x: [Float], step: Float, loss: ([Float]) -> Double) -> [Float] {
    var probe = x
    return (0..<x.count).map { i in
        probe[i] = x[i] + step
        let up = loss(probe)
        probe[i] = x[i] - step
        let down = loss(probe)
        probe[i] = x[i]
        return Float((up - down) / (2 * Double(step)))
    }
}

/// sum(out * weights) in Double: the loss whose gradient wrt `out` is `weights`.
func dot(_ out: [Float], _ weights: [Float]) -> Double {
    precondition(out.count == weights.count)
    var s = 0.0
    for i in 0..<out.count { s += Double(out[i]) * Double(weights[i]) }
    return s
}

/// Deterministic pseudo-random values in [-1, 1) (SplitMix64), so finite-difference tests are reproducible.
struct TestRandom {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> Float {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return Float(z >> 40) / Float(1 << 23) - 1
    }

    mutating func array(_ n: Int) -> [Float] { (0..<n).map { _ in next() } }
}

/// Calls `body` with a pointer to a copy of `a`, or nil when `a` is nil.
func withOptionalPointer<R>(_ a: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
    guard let a else { return body(nil) }
    return a.withUnsafeBufferPointer { body($0.baseAddress!) }
}

/// Calls `body` with a mutable pointer into `a`, or nil when `a` is nil.
func withOptionalMutablePointer<R>(_ a: inout [Float]?, _ body: (UnsafeMutablePointer<Float>?) -> R) -> R {
    guard a != nil else { return body(nil) }
    return a!.withUnsafeMutableBufferPointer { body($0.baseAddress!) }
}

/// Runs a one-input kernel `f(result, source)` into a fresh buffer of `count` elements that starts
/// at `start` (NaN for a forward, so unwritten elements show; a value for a backward, which accumulates).
func apply(_ source: [Float], count: Int, start: Float = .nan,
           _ f: (UnsafeMutablePointer<Float>, UnsafePointer<Float>) -> Void) -> [Float] {
    var result = [Float](repeating: start, count: count)
    source.withUnsafeBufferPointer { src in
        result.withUnsafeMutableBufferPointer { f($0.baseAddress!, src.baseAddress!) }
    }
    return result
}
