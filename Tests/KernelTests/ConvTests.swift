@testable import MAEKernels
import TestSupport
import XCTest

// MARK: - Array wrappers over the pointer kernels

/// Forward conv into a NaN-filled buffer, so an element the kernel forgets to write shows up.
private func conv2d(_ x: [Float], _ w: [Float], _ b: [Float]?, _ s: Conv2dSize) -> [Float] {
    var out = [Float](repeating: .nan, count: s.batch * s.outChannels * s.outHeight * s.outWidth)
    x.withUnsafeBufferPointer { xp in
        w.withUnsafeBufferPointer { wp in
            withOptionalPointer(b) { bp in
                out.withUnsafeMutableBufferPointer {
                    conv2dForward(out: $0.baseAddress!, input: xp.baseAddress!, weight: wp.baseAddress!,
                                  bias: bp, size: s)
                }
            }
        }
    }
    return out
}

/// Backward conv with every gradient buffer starting at `start` (the kernel accumulates onto it).
private func conv2dGrads(_ g: [Float], _ x: [Float], _ w: [Float], _ s: Conv2dSize, bias: Bool,
                         input: Bool = true, start: Float = 0) -> (dx: [Float]?, dw: [Float], db: [Float]?) {
    var dx: [Float]? = input ? [Float](repeating: start, count: x.count) : nil
    var dw = [Float](repeating: start, count: w.count)
    var db: [Float]? = bias ? [Float](repeating: start, count: s.outChannels) : nil
    g.withUnsafeBufferPointer { gp in
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                withOptionalMutablePointer(&dx) { dxp in
                    withOptionalMutablePointer(&db) { dbp in
                        dw.withUnsafeMutableBufferPointer {
                            conv2dBackward(dInput: dxp, dWeight: $0.baseAddress!, dBias: dbp, dOut: gp.baseAddress!,
                                           input: xp.baseAddress!, weight: wp.baseAddress!, size: s)
                        }
                    }
                }
            }
        }
    }
    return (dx, dw, db)
}

private func convT(_ x: [Float], _ w: [Float], _ b: [Float]?, _ s: ConvTranspose2dSize) -> [Float] {
    var out = [Float](repeating: .nan, count: s.batch * s.outChannels * s.outHeight * s.outWidth)
    x.withUnsafeBufferPointer { xp in
        w.withUnsafeBufferPointer { wp in
            withOptionalPointer(b) { bp in
                out.withUnsafeMutableBufferPointer {
                    convTranspose2dForward(out: $0.baseAddress!, input: xp.baseAddress!, weight: wp.baseAddress!,
                                           bias: bp, size: s)
                }
            }
        }
    }
    return out
}

private func convTGrads(_ g: [Float], _ x: [Float], _ w: [Float], _ s: ConvTranspose2dSize, bias: Bool,
                        start: Float = 0) -> (dx: [Float], dw: [Float], db: [Float]?) {
    var dx: [Float]? = [Float](repeating: start, count: x.count)
    var dw = [Float](repeating: start, count: w.count)
    var db: [Float]? = bias ? [Float](repeating: start, count: s.outChannels) : nil
    g.withUnsafeBufferPointer { gp in
        x.withUnsafeBufferPointer { xp in
            w.withUnsafeBufferPointer { wp in
                withOptionalMutablePointer(&dx) { dxp in
                    withOptionalMutablePointer(&db) { dbp in
                        dw.withUnsafeMutableBufferPointer {
                            convTranspose2dBackward(dInput: dxp, dWeight: $0.baseAddress!, dBias: dbp,
                                                    dOut: gp.baseAddress!, input: xp.baseAddress!,
                                                    weight: wp.baseAddress!, size: s)
                        }
                    }
                }
            }
        }
    }
    return (dx!, dw, db)
}

// MARK: - Naive references (direct loops in Double), for shapes too big for fixtures

/// out (B,OC,OH,OW) of a convolution by its definition.
private func naiveConv2d(_ x: [Float], _ w: [Float], _ b: [Float]?, _ s: Conv2dSize) -> [Float] {
    let oh = s.outHeight, ow = s.outWidth
    var out = [Float](repeating: 0, count: s.batch * s.outChannels * oh * ow)
    for n in 0..<s.batch { for o in 0..<s.outChannels { for i in 0..<oh { for j in 0..<ow {
        var acc = Double(b?[o] ?? 0)
        for c in 0..<s.inChannels { for kh in 0..<s.kernelH { for kw in 0..<s.kernelW {
            let h = i * s.strideH - s.padH + kh * s.dilationH, v = j * s.strideW - s.padW + kw * s.dilationW
            guard h >= 0 && h < s.height && v >= 0 && v < s.width else { continue }
            acc += Double(x[((n * s.inChannels + c) * s.height + h) * s.width + v])
                * Double(w[((o * s.inChannels + c) * s.kernelH + kh) * s.kernelW + kw])
        } } }
        out[((n * s.outChannels + o) * oh + i) * ow + j] = Float(acc)
    } } } }
    return out
}

/// out (B,OC,OH,OW) of a transposed convolution by its definition: every input pixel scatters
/// its weighted kernel onto the output.
private func naiveConvT(_ x: [Float], _ w: [Float], _ b: [Float]?, _ s: ConvTranspose2dSize) -> [Float] {
    let oh = s.outHeight, ow = s.outWidth
    var out = [Double](repeating: 0, count: s.batch * s.outChannels * oh * ow)
    for n in 0..<s.batch { for c in 0..<s.inChannels { for i in 0..<s.height { for j in 0..<s.width {
        let v = Double(x[((n * s.inChannels + c) * s.height + i) * s.width + j])
        for o in 0..<s.outChannels { for kh in 0..<s.kernelH { for kw in 0..<s.kernelW {
            let h = i * s.strideH - s.padH + kh * s.dilationH, q = j * s.strideW - s.padW + kw * s.dilationW
            guard h >= 0 && h < oh && q >= 0 && q < ow else { continue }
            out[((n * s.outChannels + o) * oh + h) * ow + q] +=
                v * Double(w[((c * s.outChannels + o) * s.kernelH + kh) * s.kernelW + kw])
        } } }
    } } } }
    for n in 0..<s.batch { for o in 0..<s.outChannels { for p in 0..<oh * ow {
        out[(n * s.outChannels + o) * oh * ow + p] += Double(b?[o] ?? 0)
    } } }
    return out.map { Float($0) }
}

/// Runs `body` with im2col bands of at most `floats` floats (one output row at least), then
/// restores the default, so small shapes exercise the banded products too.
private func withColumnBudget(_ floats: Int, _ body: () throws -> Void) rethrows {
    let saved = convColumnBudget
    convColumnBudget = floats
    defer { convColumnBudget = saved }
    try body()
}

final class ConvTests: XCTestCase {
    // MARK: PyTorch parity

    func testConv2dMatchesPyTorch() throws {
        try checkConv2dAgainstPyTorch()
        try withColumnBudget(1) { try checkConv2dAgainstPyTorch() }
    }

    private func checkConv2dAgainstPyTorch() throws {
        let fx = try ImageOpFixtures.load()
        let cases = fx.cases("conv2d")
        XCTAssertEqual(cases.count, 7)
        for c in cases {
            let sh = try c.ints("shape")
            let s = Conv2dSize(batch: sh[0], inChannels: sh[1], height: sh[2], width: sh[3], outChannels: sh[4],
                               kernel: try c.pair("kernel"), stride: try c.pair("stride"),
                               padding: try c.pair("padding"), dilation: try c.pair("dilation"))
            let hasBias = try c.flag("bias")
            let x = try fx.tensor(c, "input"), w = try fx.tensor(c, "weight")
            let b = hasBias ? try fx.tensor(c, "bias") : nil
            XCTAssertEqual(try fx.shape(c, "out"), [s.batch, s.outChannels, s.outHeight, s.outWidth], c.name)
            assertClose(conv2d(x, w, b, s), try fx.tensor(c, "out"), rtol: 1e-4, atol: 1e-5, "\(c.name) out")
            // Gradients start at 0.5 so the comparison also checks that backward accumulates.
            let g = try fx.tensor(c, "grad_out")
            let (dx, dw, db) = conv2dGrads(g, x, w, s, bias: hasBias, start: 0.5)
            assertClose(dx!, try fx.tensor(c, "d_input").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dInput")
            assertClose(dw, try fx.tensor(c, "d_weight").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dWeight")
            if hasBias {
                assertClose(db!, try fx.tensor(c, "d_bias").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dBias")
            }
        }
    }

    func testConvTranspose2dMatchesPyTorch() throws {
        try checkConvTranspose2dAgainstPyTorch()
        try withColumnBudget(1) { try checkConvTranspose2dAgainstPyTorch() }
    }

    private func checkConvTranspose2dAgainstPyTorch() throws {
        let fx = try ImageOpFixtures.load()
        let cases = fx.cases("conv_transpose2d")
        XCTAssertEqual(cases.count, 5)
        for c in cases {
            let sh = try c.ints("shape")
            let s = ConvTranspose2dSize(batch: sh[0], inChannels: sh[1], height: sh[2], width: sh[3],
                                        outChannels: sh[4], kernel: try c.pair("kernel"), stride: try c.pair("stride"),
                                        padding: try c.pair("padding"), outputPadding: try c.pair("output_padding"),
                                        dilation: try c.pair("dilation"))
            let hasBias = try c.flag("bias")
            let x = try fx.tensor(c, "input"), w = try fx.tensor(c, "weight")
            let b = hasBias ? try fx.tensor(c, "bias") : nil
            XCTAssertEqual(try fx.shape(c, "out"), [s.batch, s.outChannels, s.outHeight, s.outWidth], c.name)
            assertClose(convT(x, w, b, s), try fx.tensor(c, "out"), rtol: 1e-4, atol: 1e-5, "\(c.name) out")
            let g = try fx.tensor(c, "grad_out")
            let (dx, dw, db) = convTGrads(g, x, w, s, bias: hasBias, start: 0.5)
            assertClose(dx, try fx.tensor(c, "d_input").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dInput")
            assertClose(dw, try fx.tensor(c, "d_weight").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dWeight")
            if hasBias {
                assertClose(db!, try fx.tensor(c, "d_bias").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(c.name) dBias")
            }
        }
    }

    // MARK: Finite differences

    /// Every gradient against central differences of sum(out * r), step 1e-2 (the ops are linear in
    /// each argument, so the only error is float rounding in the forward): rtol 1e-2, atol 1e-3.
    func testConv2dGradientsMatchFiniteDifferences() {
        let sizes = [
            Conv2dSize(batch: 2, inChannels: 3, height: 7, width: 6, outChannels: 2, kernel: (3, 3),
                       stride: (2, 2), padding: (1, 1)),
            Conv2dSize(batch: 1, inChannels: 2, height: 5, width: 7, outChannels: 3, kernel: (2, 3),
                       stride: (1, 2), padding: (0, 1), dilation: (2, 1)),
            Conv2dSize(batch: 2, inChannels: 3, height: 3, width: 5, outChannels: 2, kernel: (1, 1)),
        ]
        var rng = TestRandom(seed: 1)
        for (n, s) in sizes.enumerated() {
            let x = rng.array(s.batch * s.inChannels * s.height * s.width)
            let w = rng.array(s.outChannels * s.inChannels * s.kernelH * s.kernelW)
            let b = rng.array(s.outChannels)
            let r = rng.array(s.batch * s.outChannels * s.outHeight * s.outWidth)
            let (dx, dw, db) = conv2dGrads(r, x, w, s, bias: true)
            let h: Float = 1e-2
            assertClose(dx!, numericGradient(x, step: h) { dot(conv2d($0, w, b, s), r) },
                        rtol: 1e-2, atol: 1e-3, "size \(n) dInput")
            assertClose(dw, numericGradient(w, step: h) { dot(conv2d(x, $0, b, s), r) },
                        rtol: 1e-2, atol: 1e-3, "size \(n) dWeight")
            assertClose(db!, numericGradient(b, step: h) { dot(conv2d(x, w, $0, s), r) },
                        rtol: 1e-2, atol: 1e-3, "size \(n) dBias")
            // Without dInput (a first layer) the other gradients are unchanged.
            let (none, dw2, _) = conv2dGrads(r, x, w, s, bias: false, input: false)
            XCTAssertNil(none)
            XCTAssertEqual(dw2, dw, "size \(n) dWeight without dInput")
        }
    }

    func testConvTranspose2dGradientsMatchFiniteDifferences() {
        let sizes = [
            ConvTranspose2dSize(batch: 2, inChannels: 3, height: 3, width: 4, outChannels: 2, kernel: (3, 3),
                                stride: (2, 2), padding: (1, 1), outputPadding: (1, 0)),
            ConvTranspose2dSize(batch: 1, inChannels: 2, height: 4, width: 3, outChannels: 3, kernel: (2, 3),
                                stride: (1, 2), padding: (1, 0), dilation: (2, 1)),
        ]
        var rng = TestRandom(seed: 2)
        for (n, s) in sizes.enumerated() {
            let x = rng.array(s.batch * s.inChannels * s.height * s.width)
            let w = rng.array(s.inChannels * s.outChannels * s.kernelH * s.kernelW)
            let b = rng.array(s.outChannels)
            let r = rng.array(s.batch * s.outChannels * s.outHeight * s.outWidth)
            let (dx, dw, db) = convTGrads(r, x, w, s, bias: true)
            let h: Float = 1e-2
            assertClose(dx, numericGradient(x, step: h) { dot(convT($0, w, b, s), r) },
                        rtol: 1e-2, atol: 1e-3, "size \(n) dInput")
            assertClose(dw, numericGradient(w, step: h) { dot(convT(x, $0, b, s), r) },
                        rtol: 1e-2, atol: 1e-3, "size \(n) dWeight")
            assertClose(db!, numericGradient(b, step: h) { dot(convT(x, w, $0, s), r) },
                        rtol: 1e-2, atol: 1e-3, "size \(n) dBias")
        }
    }

    // MARK: Larger shapes (split matrix products) against the direct definition

    /// Shapes big enough for `BLAS.gemm` to split its products over workers. The forward is checked
    /// against the definition; the backward through the adjoint identities of a linear map:
    /// <conv(x, w), g> = <x, dInput> = <w, dWeight> (no bias). Run whole and in uneven bands.
    func testConv2dMatchesDirectLoopsOnLargerShape() {
        checkLargeConv2d()
        withColumnBudget(16_000) { checkLargeConv2d() }
    }

    func testConvTranspose2dMatchesDirectLoopsOnLargerShape() {
        checkLargeConvTranspose2d()
        withColumnBudget(16_000) { checkLargeConvTranspose2d() }
    }

    /// A k2 s2 upsampler (ViTDet's pyramid) in several bands of input rows, with and without bias,
    /// against the definition.
    func testStrideTwoConvTransposeInBandsMatchesDirectLoops() {
        let s = ConvTranspose2dSize(batch: 2, inChannels: 24, height: 19, width: 9, outChannels: 16,
                                    kernel: (2, 2), stride: (2, 2))
        let saved = convColumnBudget
        convColumnBudget = 24 * 4 * 9 * 3
        defer { convColumnBudget = saved }
        var rng = TestRandom(seed: 5)
        let x = rng.array(s.batch * s.inChannels * s.height * s.width)
        let w = rng.array(s.inChannels * s.outChannels * 4), b = rng.array(s.outChannels)
        assertClose(convT(x, w, b, s), naiveConvT(x, w, b, s), rtol: 1e-4, atol: 1e-4, "k2 s2 with bias")
        assertClose(convT(x, w, nil, s), naiveConvT(x, w, nil, s), rtol: 1e-4, atol: 1e-4, "k2 s2 without bias")
    }

    private func checkLargeConv2d() {
        let s = Conv2dSize(batch: 2, inChannels: 32, height: 20, width: 19, outChannels: 40, kernel: (3, 3),
                           stride: (1, 1), padding: (1, 1))
        var rng = TestRandom(seed: 3)
        let x = rng.array(s.batch * s.inChannels * s.height * s.width)
        let w = rng.array(s.outChannels * s.inChannels * 9)
        let b = rng.array(s.outChannels)
        assertClose(conv2d(x, w, b, s), naiveConv2d(x, w, b, s), rtol: 1e-4, atol: 1e-4, "conv2d 32->40")
        let g = rng.array(s.batch * s.outChannels * s.outHeight * s.outWidth)
        let (dx, dw, _) = conv2dGrads(g, x, w, s, bias: false)
        let y = dot(conv2d(x, w, nil, s), g)
        XCTAssertEqual(dot(x, dx!), y, accuracy: 1e-4 * abs(y) + 1e-2, "<x, dInput>")
        XCTAssertEqual(dot(w, dw), y, accuracy: 1e-4 * abs(y) + 1e-2, "<w, dWeight>")
    }

    private func checkLargeConvTranspose2d() {
        let s = ConvTranspose2dSize(batch: 2, inChannels: 64, height: 12, width: 11, outChannels: 32,
                                    kernel: (3, 3), stride: (2, 2), padding: (1, 1), outputPadding: (1, 1))
        var rng = TestRandom(seed: 4)
        let x = rng.array(s.batch * s.inChannels * s.height * s.width)
        let w = rng.array(s.inChannels * s.outChannels * 9)
        let b = rng.array(s.outChannels)
        assertClose(convT(x, w, b, s), naiveConvT(x, w, b, s), rtol: 1e-4, atol: 1e-4, "convT 64->32")
        let g = rng.array(s.batch * s.outChannels * s.outHeight * s.outWidth)
        let (dx, dw, _) = convTGrads(g, x, w, s, bias: false)
        let y = dot(convT(x, w, nil, s), g)
        XCTAssertEqual(dot(x, dx), y, accuracy: 1e-4 * abs(y) + 1e-2, "<x, dInput>")
        XCTAssertEqual(dot(w, dw), y, accuracy: 1e-4 * abs(y) + 1e-2, "<w, dWeight>")
    }
}
