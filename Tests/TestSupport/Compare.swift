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

/// Where the PyTorch reference fixtures live (copied from ../shared/fixtures into this target).
public func fixtureURL(_ name: String) -> URL {
    Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)!
}
