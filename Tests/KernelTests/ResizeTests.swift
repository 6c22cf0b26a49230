import MAEKernels
import TestSupport
import XCTest

private enum Mode: String, CaseIterable { case bilinear, bicubic }

private func resize(_ x: [Float], _ s: Resample2dSize, _ mode: Mode, alignCorners: Bool) -> [Float] {
    apply(x, count: s.batch * s.channels * s.outHeight * s.outWidth) {
        switch mode {
        case .bilinear: resizeBilinearForward(out: $0, input: $1, size: s, alignCorners: alignCorners)
        case .bicubic: resizeBicubicForward(out: $0, input: $1, size: s, alignCorners: alignCorners)
        }
    }
}

private func resizeGrad(_ g: [Float], _ s: Resample2dSize, _ mode: Mode, alignCorners: Bool,
                        start: Float = 0) -> [Float] {
    apply(g, count: s.batch * s.channels * s.height * s.width, start: start) {
        switch mode {
        case .bilinear: resizeBilinearBackward(dInput: $0, dOut: $1, size: s, alignCorners: alignCorners)
        case .bicubic: resizeBicubicBackward(dInput: $0, dOut: $1, size: s, alignCorners: alignCorners)
        }
    }
}

final class ResizeTests: XCTestCase {
    /// Forward rtol 1e-4 atol 1e-5; gradients (starting at 0.5, to check accumulation) rtol 1e-3.
    func testResizeMatchesPyTorch() throws {
        let fx = try ImageOpFixtures.load()
        for mode in Mode.allCases {
            let cases = fx.cases(mode.rawValue)
            XCTAssertEqual(cases.count, 12, mode.rawValue)
            for c in cases {
                let sh = try c.ints("shape"), o = try c.pair("out_size"), align = try c.flag("align_corners")
                let s = Resample2dSize(batch: sh[0], channels: sh[1], height: sh[2], width: sh[3],
                                       outHeight: o.0, outWidth: o.1)
                let name = "\(mode.rawValue) \(c.name)"
                assertClose(resize(try fx.tensor(c, "input"), s, mode, alignCorners: align), try fx.tensor(c, "out"),
                            rtol: 1e-4, atol: 1e-5, "\(name) out")
                assertClose(resizeGrad(try fx.tensor(c, "grad_out"), s, mode, alignCorners: align, start: 0.5),
                            try fx.tensor(c, "d_input").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(name) dInput")
            }
        }
    }

    /// Central differences, step 1e-2 (resizing is linear, so only float rounding remains):
    /// rtol 1e-2, atol 1e-3. Up, down and mixed sizes, odd and even, both corner conventions.
    func testResizeGradientsMatchFiniteDifferences() {
        var rng = TestRandom(seed: 8)
        let sizes = [Resample2dSize(batch: 1, channels: 2, height: 5, width: 4, outHeight: 9, outWidth: 3),
                     Resample2dSize(batch: 2, channels: 1, height: 3, width: 7, outHeight: 2, outWidth: 11)]
        for mode in Mode.allCases {
            for s in sizes {
                for align in [false, true] {
                    let x = rng.array(s.batch * s.channels * s.height * s.width)
                    let r = rng.array(s.batch * s.channels * s.outHeight * s.outWidth)
                    assertClose(resizeGrad(r, s, mode, alignCorners: align),
                                numericGradient(x, step: 1e-2) { dot(resize($0, s, mode, alignCorners: align), r) },
                                rtol: 1e-2, atol: 1e-3,
                                "\(mode.rawValue) \(s.height)x\(s.width)->\(s.outHeight)x\(s.outWidth) align \(align)")
                }
            }
        }
    }

    /// Resizing to the same size is the identity, and a constant image stays constant (the taps
    /// of every output position sum to one, border clamping included).
    func testResizeIdentityAndConstant() {
        var rng = TestRandom(seed: 9)
        let same = Resample2dSize(batch: 1, channels: 2, height: 6, width: 5, outHeight: 6, outWidth: 5)
        let x = rng.array(60)
        let up = Resample2dSize(batch: 1, channels: 1, height: 4, width: 3, outHeight: 9, outWidth: 7)
        let flat = [Float](repeating: 2.5, count: 12)
        for mode in Mode.allCases {
            for align in [false, true] {
                XCTAssertEqual(resize(x, same, mode, alignCorners: align), x, "\(mode.rawValue) identity")
                assertClose(resize(flat, up, mode, alignCorners: align), [Float](repeating: 2.5, count: 63),
                            rtol: 1e-6, atol: 1e-6, "\(mode.rawValue) constant")
            }
        }
    }
}
