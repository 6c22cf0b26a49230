import XCTest
import MAEKernels
import TestSupport

/// The details of MAE's ViT that are easy to get subtly wrong, each a named test.
final class MAETrapTests: XCTestCase {
    /// nn.GELU() is exact: x * Phi(x) with erf, not the tanh approximation (they differ by ~1e-3).
    func testGELUIsTheErfForm() {
        let xs = (0..<2001).map { Float($0) / 200 - 5 }
        var out = [Float](repeating: 0, count: xs.count)
        geluForward(out: &out, input: xs, count: xs.count)
        var worstErf: Double = 0, worstTanh: Double = 0
        for (x, y) in zip(xs.map(Double.init), out.map(Double.init)) {
            let exact = 0.5 * x * erfc(-x / 2.0.squareRoot())
            let tanhForm = 0.5 * x * (1 + tanh((2 / Double.pi).squareRoot() * (x + 0.044715 * x * x * x)))
            worstErf = max(worstErf, abs(y - exact) / max(abs(exact), 1e-6))
            worstTanh = max(worstTanh, abs(y - tanhForm))
        }
        XCTAssertLessThan(worstErf, 2e-6, "GELU must match the erf definition")
        XCTAssertGreaterThan(worstTanh, 1e-4, "GELU must not be the tanh approximation")
    }

    /// MAE's LayerNorm uses eps 1e-6 (timm's default is 1e-5): visible on low-variance rows.
    func testLayerNormEpsIsOneInAMillion() {
        let d = 8
        let x: [Float] = (0..<d).map { Float($0) * 1e-3 }  // variance 5.25e-6: eps matters
        let ones = [Float](repeating: 1, count: d), zeros = [Float](repeating: 0, count: d)
        let out = Tensor([d]), m = Tensor([1]), s = Tensor([1])
        layerNormForward(out: out.data, mean: m.data, rstd: s.data, input: x, weight: ones, bias: zeros,
                         rows: 1, width: d)
        let mean = x.map(Double.init).reduce(0, +) / Double(d)
        let v = x.map { (Double($0) - mean) * (Double($0) - mean) }.reduce(0, +) / Double(d)
        let expected6 = 1 / (v + 1e-6).squareRoot(), expected5 = 1 / (v + 1e-5).squareRoot()
        XCTAssertEqual(Double(s[0]), expected6, accuracy: expected6 * 1e-5)
        XCTAssertGreaterThan(abs(Double(s[0]) - expected5), expected5 * 0.1)
    }
}
