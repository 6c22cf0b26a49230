import MAEKernels
import TestSupport
import XCTest

private func poolSize(_ c: ImageOpCase) throws -> Pool2dSize {
    let sh = try c.ints("shape")
    return Pool2dSize(batch: sh[0], channels: sh[1], height: sh[2], width: sh[3], kernel: try c.pair("kernel"),
                      stride: try c.pair("stride"), padding: try c.pair("padding"))
}

private func inCount(_ s: Pool2dSize) -> Int { s.batch * s.channels * s.height * s.width }
private func outCount(_ s: Pool2dSize) -> Int { s.batch * s.channels * s.outHeight * s.outWidth }

/// Max pool forward: values and winner indices.
private func maxPool(_ x: [Float], _ s: Pool2dSize) -> ([Float], [Int32]) {
    var idx = [Int32](repeating: -1, count: outCount(s))
    let out = idx.withUnsafeMutableBufferPointer { ip in
        apply(x, count: outCount(s)) { maxPool2dForward(out: $0, indices: ip.baseAddress!, input: $1, size: s) }
    }
    return (out, idx)
}

private func maxPoolGrad(_ g: [Float], _ idx: [Int32], _ s: Pool2dSize, start: Float = 0) -> [Float] {
    idx.withUnsafeBufferPointer { ip in
        apply(g, count: inCount(s), start: start) {
            maxPool2dBackward(dInput: $0, dOut: $1, indices: ip.baseAddress!, size: s)
        }
    }
}

private func avgPool(_ x: [Float], _ s: Pool2dSize, includePad: Bool) -> [Float] {
    apply(x, count: outCount(s)) { avgPool2dForward(out: $0, input: $1, size: s, countIncludePad: includePad) }
}

private func avgPoolGrad(_ g: [Float], _ s: Pool2dSize, includePad: Bool, start: Float = 0) -> [Float] {
    apply(g, count: inCount(s), start: start) {
        avgPool2dBackward(dInput: $0, dOut: $1, size: s, countIncludePad: includePad)
    }
}

private func adaptivePool(_ x: [Float], _ s: Resample2dSize) -> [Float] {
    apply(x, count: s.batch * s.channels * s.outHeight * s.outWidth) { adaptiveAvgPool2dForward(out: $0, input: $1, size: s) }
}

private func adaptivePoolGrad(_ g: [Float], _ s: Resample2dSize, start: Float = 0) -> [Float] {
    apply(g, count: s.batch * s.channels * s.height * s.width, start: start) {
        adaptiveAvgPool2dBackward(dInput: $0, dOut: $1, size: s)
    }
}

final class PoolingTests: XCTestCase {
    // MARK: PyTorch parity (gradients start at 0.5 to check that backward accumulates)

    func testMaxPoolMatchesPyTorch() throws {
        let fx = try ImageOpFixtures.load()
        let cases = fx.cases("max_pool2d")
        XCTAssertEqual(cases.count, 5)
        for c in cases {
            let s = try poolSize(c)
            XCTAssertEqual(try fx.shape(c, "out"), [s.batch, s.channels, s.outHeight, s.outWidth], c.name)
            let (out, idx) = maxPool(try fx.tensor(c, "input"), s)
            assertClose(out, try fx.tensor(c, "out"), rtol: 0, atol: 0, "\(c.name) out")
            XCTAssertEqual(idx.map(Float.init), try fx.tensor(c, "indices"), "\(c.name) indices")
            assertClose(maxPoolGrad(try fx.tensor(c, "grad_out"), idx, s, start: 0.5),
                        try fx.tensor(c, "d_input").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dInput")
        }
    }

    func testAvgPoolMatchesPyTorch() throws {
        let fx = try ImageOpFixtures.load()
        let cases = fx.cases("avg_pool2d")
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let s = try poolSize(c), includePad = try c.flag("count_include_pad")
            XCTAssertEqual(try fx.shape(c, "out"), [s.batch, s.channels, s.outHeight, s.outWidth], c.name)
            assertClose(avgPool(try fx.tensor(c, "input"), s, includePad: includePad), try fx.tensor(c, "out"),
                        rtol: 1e-4, atol: 1e-5, "\(c.name) out")
            assertClose(avgPoolGrad(try fx.tensor(c, "grad_out"), s, includePad: includePad, start: 0.5),
                        try fx.tensor(c, "d_input").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dInput")
        }
    }

    func testAdaptiveAvgPoolMatchesPyTorch() throws {
        let fx = try ImageOpFixtures.load()
        let cases = fx.cases("adaptive_avg_pool2d")
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let sh = try c.ints("shape"), o = try c.pair("out_size")
            let s = Resample2dSize(batch: sh[0], channels: sh[1], height: sh[2], width: sh[3],
                                   outHeight: o.0, outWidth: o.1)
            assertClose(adaptivePool(try fx.tensor(c, "input"), s), try fx.tensor(c, "out"),
                        rtol: 1e-4, atol: 1e-5, "\(c.name) out")
            assertClose(adaptivePoolGrad(try fx.tensor(c, "grad_out"), s, start: 0.5),
                        try fx.tensor(c, "d_input").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dInput")
        }
    }

    // MARK: Finite differences (rtol 1e-2, atol 1e-3)

    func testMaxPoolGradientMatchesFiniteDifferences() {
        let s = Pool2dSize(batch: 2, channels: 2, height: 7, width: 6, kernel: (3, 3), stride: (2, 2), padding: (1, 1))
        // Distinct values 0.05 apart and a step of 1e-3, so no probe changes which element wins.
        var rng = TestRandom(seed: 5)
        let order = (0..<inCount(s)).map { ($0, rng.next()) }.sorted { $0.1 < $1.1 }.map(\.0)
        var x = [Float](repeating: 0, count: inCount(s))
        for (rank, i) in order.enumerated() { x[i] = Float(rank) * 0.05 - 3 }
        let r = rng.array(outCount(s))
        let (_, idx) = maxPool(x, s)
        assertClose(maxPoolGrad(r, idx, s), numericGradient(x, step: 1e-3) { dot(maxPool($0, s).0, r) },
                    rtol: 1e-2, atol: 1e-3, "max pool dInput")
    }

    func testAvgPoolGradientMatchesFiniteDifferences() {
        let s = Pool2dSize(batch: 1, channels: 3, height: 7, width: 8, kernel: (3, 2), stride: (2, 1), padding: (1, 1))
        var rng = TestRandom(seed: 6)
        let x = rng.array(inCount(s)), r = rng.array(outCount(s))
        for includePad in [true, false] {
            assertClose(avgPoolGrad(r, s, includePad: includePad),
                        numericGradient(x, step: 1e-2) { dot(avgPool($0, s, includePad: includePad), r) },
                        rtol: 1e-2, atol: 1e-3, "avg pool dInput (count_include_pad \(includePad))")
        }
    }

    func testAdaptiveAvgPoolGradientMatchesFiniteDifferences() {
        var rng = TestRandom(seed: 7)
        for s in [Resample2dSize(batch: 1, channels: 2, height: 7, width: 9, outHeight: 3, outWidth: 4),
                  Resample2dSize(batch: 2, channels: 1, height: 5, width: 4, outHeight: 7, outWidth: 3)] {
            let x = rng.array(s.batch * s.channels * s.height * s.width)
            let r = rng.array(s.batch * s.channels * s.outHeight * s.outWidth)
            assertClose(adaptivePoolGrad(r, s), numericGradient(x, step: 1e-2) { dot(adaptivePool($0, s), r) },
                        rtol: 1e-2, atol: 1e-3, "adaptive pool \(s.height)x\(s.width) -> \(s.outHeight)x\(s.outWidth)")
        }
    }

    // MARK: torch semantics as named tests

    /// Padding is -inf, not zero: an all-negative input still pools to its own maximum.
    func testMaxPoolPaddingNeverWins() {
        let s = Pool2dSize(batch: 1, channels: 1, height: 2, width: 2, kernel: (3, 3), stride: (1, 1), padding: (1, 1))
        let (out, idx) = maxPool([-3, -2, -4, -1], s)
        XCTAssertEqual(out, [-1, -1, -1, -1])
        XCTAssertEqual(idx, [3, 3, 3, 3])
    }

    /// As torch, a NaN in a window makes that output NaN.
    func testMaxPoolPropagatesNaN() {
        let s = Pool2dSize(batch: 1, channels: 1, height: 2, width: 4, kernel: (2, 2))
        let (out, idx) = maxPool([1, .nan, 5, 6, 2, 3, 7, 8], s)
        XCTAssertTrue(out[0].isNaN)
        XCTAssertEqual(idx[0], 1)
        XCTAssertEqual(out[1], 8)
    }
}
