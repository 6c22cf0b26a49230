import MAEKernels
import XCTest

/// Element-wise comparison with PyTorch-style tolerances: |a - e| <= atol + rtol * |e| for every
/// element. On failure reports the max abs and max relative error, where they are, and the first
/// few mismatching pairs, pointing at the caller's file and line.
public func assertClose(_ actual: [Float], _ expected: [Float], rtol: Float = 1e-4, atol: Float = 1e-6,
                        _ name: String, file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(name): \(actual.count) values, expected \(expected.count)", file: file, line: line)
        return
    }
    var maxAbs: Float = 0, maxAbsAt = 0, maxRel: Float = 0, maxRelAt = 0
    var bad: [Int] = []
    for i in 0..<actual.count {
        let d = abs(actual[i] - expected[i])
        let rel = d / max(abs(expected[i]), Float.leastNormalMagnitude)
        if d > maxAbs || d.isNaN { maxAbs = d; maxAbsAt = i }
        if rel > maxRel && abs(expected[i]) > atol { maxRel = rel; maxRelAt = i }
        if !(d <= atol + rtol * abs(expected[i])) { bad.append(i) }
    }
    if ProcessInfo.processInfo.environment["MAE_PARITY_REPORT"] != nil {
        print("parity \(name): n=\(actual.count) max abs \(maxAbs) max rel \(maxRel)")
    }
    guard !bad.isEmpty else { return }
    let pairs = bad.prefix(4).map { "[\($0)] \(actual[$0]) vs \(expected[$0])" }.joined(separator: ", ")
    XCTFail("\(name): \(bad.count)/\(actual.count) outside rtol \(rtol) atol \(atol); " +
            "max abs \(maxAbs) at \(maxAbsAt), max rel \(maxRel) at \(maxRelAt); first: \(pairs)",
            file: file, line: line)
}

/// Max absolute and relative error, for tests that print what they measured.
public func maxErrors(_ actual: [Float], _ expected: [Float]) -> (abs: Float, rel: Float) {
    var a: Float = 0, r: Float = 0
    for (x, y) in zip(actual, expected) {
        let d = abs(x - y)
        a = max(a, d)
        r = max(r, d / max(abs(y), 1e-12))
    }
    return (a, r)
}

/// Where the PyTorch reference fixtures live (copies of the shared reference fixtures, kept in this target).
public func fixtureURL(_ name: String) -> URL {
    Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)!
}

/// Checks an analytic gradient against central finite differences of `loss`, on up to `samples`
/// evenly spread coordinates of `input`: |numeric - analytic| <= atol + rtol * |numeric|.
public func checkGradient(_ name: String, input: [Float], analytic: [Float], step: Float = 1e-2,
                          rtol: Float = 2e-2, atol: Float = 2e-3, samples: Int = 48,
                          file: StaticString = #filePath, line: UInt = #line, loss: ([Float]) -> Double) {
    XCTAssertEqual(input.count, analytic.count, "\(name): gradient size", file: file, line: line)
    let stride = max(1, input.count / samples)
    var worst: (Float, Int) = (0, -1)
    for i in Swift.stride(from: 0, to: input.count, by: stride) {
        var x = input
        x[i] = input[i] + step
        let up = loss(x)
        x[i] = input[i] - step
        let down = loss(x)
        let numeric = Float((up - down) / Double(2 * step))
        let err = abs(numeric - analytic[i])
        if err > atol + rtol * abs(numeric) {
            XCTFail("\(name)[\(i)]: analytic \(analytic[i]) vs finite difference \(numeric)", file: file, line: line)
            return
        }
        if err > worst.0 { worst = (err, i) }
    }
}

/// Seeded standard-normal test data (the project's own RandomStream).
public func randomValues(_ count: Int, seed: UInt64, scale: Float = 1) -> [Float] {
    var rng = RandomStream(seed: seed)
    return (0..<count).map { _ in Float(rng.normal()) * scale }
}
