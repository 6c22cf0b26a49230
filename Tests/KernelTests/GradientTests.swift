import XCTest
import MAEKernels
import TestSupport

/// Every transformer kernel's backward against central finite differences of its forward.
/// The loss is sum(out * w) with fixed random w, so dOut = w.
final class GradientTests: XCTestCase {
    func dot(_ p: UnsafePointer<Float>, _ w: [Float]) -> Double {
        var s: Double = 0
        for i in 0..<w.count { s += Double(p[i]) * Double(w[i]) }
        return s
    }

    func testLinear() {
        let r = 5, i = 7, o = 6
        let x = randomValues(r * i, seed: 1), wt = randomValues(o * i, seed: 2), b = randomValues(o, seed: 3)
        let w = randomValues(r * o, seed: 4)
        func loss(_ x: [Float], _ wt: [Float], _ b: [Float]) -> Double {
            let out = Tensor([r, o])
            linearForward(out: out.data, input: x, weight: wt, bias: b, rows: r, inDim: i, outDim: o)
            return dot(out.data, w)
        }
        var dx = [Float](repeating: 0, count: r * i), dw = [Float](repeating: 0, count: o * i)
        var db = [Float](repeating: 0, count: o)
        linearBackward(dInput: &dx, dWeight: &dw, dBias: &db, dOut: w, input: x, weight: wt, rows: r, inDim: i, outDim: o)
        checkGradient("linear dInput", input: x, analytic: dx) { loss($0, wt, b) }
        checkGradient("linear dWeight", input: wt, analytic: dw) { loss(x, $0, b) }
        checkGradient("linear dBias", input: b, analytic: db) { loss(x, wt, $0) }
    }

    func testLinearSplitAcrossWorkersMatchesSerial() {
        // Large enough that BLAS.gemm splits the product over the workers.
        let r = 300, i = 96, o = 130
        let x = randomValues(r * i, seed: 5), wt = randomValues(o * i, seed: 6)
        let out = Tensor([r, o])
        linearForward(out: out.data, input: x, weight: wt, bias: nil, rows: r, inDim: i, outDim: o)
        var naive = [Float](repeating: 0, count: r * o)
        for a in 0..<r { for c in 0..<o { for k in 0..<i { naive[a * o + c] += x[a * i + k] * wt[c * i + k] } } }
        assertClose(out.array, naive, rtol: 1e-4, atol: 1e-4, "split gemm")
    }

    func testLayerNorm() {
        let r = 4, d = 19
        let x = randomValues(r * d, seed: 7, scale: 2), g = randomValues(d, seed: 8), b = randomValues(d, seed: 9)
        let w = randomValues(r * d, seed: 10)
        func loss(_ x: [Float], _ g: [Float], _ b: [Float]) -> Double {
            let out = Tensor([r, d]), m = Tensor([r]), s = Tensor([r])
            layerNormForward(out: out.data, mean: m.data, rstd: s.data, input: x, weight: g, bias: b, rows: r, width: d)
            return dot(out.data, w)
        }
        let out = Tensor([r, d]), m = Tensor([r]), s = Tensor([r])
        layerNormForward(out: out.data, mean: m.data, rstd: s.data, input: x, weight: g, bias: b, rows: r, width: d)
        var dx = [Float](repeating: 0, count: r * d), dg = [Float](repeating: 0, count: d), db = dg
        layerNormBackward(dInput: &dx, dWeight: &dg, dBias: &db, dOut: w, input: x, weight: g, mean: m.data,
                          rstd: s.data, rows: r, width: d)
        checkGradient("layernorm dInput", input: x, analytic: dx) { loss($0, g, b) }
        checkGradient("layernorm dWeight", input: g, analytic: dg) { loss(x, $0, b) }
        checkGradient("layernorm dBias", input: b, analytic: db) { loss(x, g, $0) }
    }

    func testGELU() {
        let n = 77
        let x = randomValues(n, seed: 11, scale: 3), w = randomValues(n, seed: 12)
        func loss(_ x: [Float]) -> Double {
            let out = Tensor([n])
            geluForward(out: out.data, input: x, count: n)
            return dot(out.data, w)
        }
        var dx = [Float](repeating: 0, count: n)
        geluBackward(dInput: &dx, dOut: w, input: x, count: n)
        checkGradient("gelu", input: x, analytic: dx, step: 1e-3, samples: n, loss: loss)
    }

    func testAttention() {
        let b = 2, n = 5, d = 12, h = 3
        let qkv = randomValues(b * n * 3 * d, seed: 13), w = randomValues(b * n * d, seed: 14)
        func loss(_ qkv: [Float]) -> Double {
            let out = Tensor([b, n, d]), p = Tensor([b, h, n, n])
            attentionForward(out: out.data, probs: p.data, qkv: qkv, batch: b, tokens: n, width: d, heads: h)
            return dot(out.data, w)
        }
        let out = Tensor([b, n, d]), p = Tensor([b, h, n, n])
        attentionForward(out: out.data, probs: p.data, qkv: qkv, batch: b, tokens: n, width: d, heads: h)
        var dqkv = [Float](repeating: 0, count: qkv.count)
        attentionBackward(dQKV: &dqkv, dOut: w, qkv: qkv, probs: p.data, batch: b, tokens: n, width: d, heads: h)
        checkGradient("attention dQKV", input: qkv, analytic: dqkv, samples: 120, loss: loss)
    }

    func testSoftmax() {
        let r = 3, k = 21
        let x = randomValues(r * k, seed: 15, scale: 3), w = randomValues(r * k, seed: 16)
        func loss(_ x: [Float]) -> Double {
            let out = Tensor([r, k])
            softmaxForward(out: out.data, input: x, rows: r, width: k)
            return dot(out.data, w)
        }
        let p = Tensor([r, k])
        softmaxForward(out: p.data, input: x, rows: r, width: k)
        var dx = [Float](repeating: 0, count: r * k)
        softmaxBackward(dInput: &dx, dOut: w, probs: p.data, rows: r, width: k)
        checkGradient("softmax", input: x, analytic: dx, loss: loss)
    }

    func testCrossEntropyWithLabelSmoothing() {
        let r = 4, k = 6
        let logits = randomValues(r * k, seed: 17, scale: 2)
        let targets = smoothedTargets(labels: [0, 5, 2, 2], classes: k, smoothing: 0.1)
        let probs = Tensor([r, k])
        func loss(_ l: [Float]) -> Double {
            Double(crossEntropyForward(probs: probs.data, logits: l, targets: targets, rows: r, classes: k))
        }
        _ = loss(logits)
        var dl = [Float](repeating: 0, count: r * k)
        crossEntropyBackward(dLogits: &dl, probs: probs.data, targets: targets, rows: r, classes: k)
        checkGradient("cross-entropy", input: logits, analytic: dl, step: 1e-2, loss: loss)
        // Against the definition: (1 - eps) * NLL + eps * mean over classes of -log p.
        var expected: Double = 0
        let labels = [0, 5, 2, 2]
        for i in 0..<r {
            let row = logits[(i * k)..<((i + 1) * k)].map(Double.init)
            let logZ = log(row.map { exp($0) }.reduce(0, +))
            expected += 0.9 * (logZ - row[labels[i]]) + 0.1 * row.map { logZ - $0 }.reduce(0, +) / Double(k)
        }
        XCTAssertEqual(loss(logits), expected / Double(r), accuracy: 1e-5)
    }

    func testMeanTokensAndDropPath() {
        let b = 2, n = 4, d = 5
        let x = randomValues(b * n * d, seed: 18), w = randomValues(b * d, seed: 19)
        func loss(_ x: [Float]) -> Double {
            let out = Tensor([b, d])
            meanTokensForward(out: out.data, input: x, batch: b, tokens: n, width: d, from: 1)
            return dot(out.data, w)
        }
        var dx = [Float](repeating: 0, count: x.count)
        meanTokensBackward(dInput: &dx, dOut: w, batch: b, tokens: n, width: d, from: 1)
        checkGradient("mean tokens", input: x, analytic: dx, loss: loss)
        XCTAssertEqual(Array(dx[0..<d]), [Float](repeating: 0, count: d), "the cls token is not pooled")

        var rng = RandomStream(seed: 3)
        var mask = [Float](repeating: 0, count: 1000)
        dropMask(&mask, count: 1000, p: 0.25, rng: &rng)
        let dropped = mask.filter { $0 == 0 }.count
        XCTAssertTrue((200...300).contains(dropped), "about a quarter dropped, got \(dropped)")
        XCTAssertTrue(mask.allSatisfy { $0 == 0 || abs($0 - 1 / 0.75) < 1e-6 }, "kept entries scaled by 1/keep")
    }

    func testVectorisedExpMatchesLibm() {
        let xs = (0..<4001).map { Float($0) / 40 - 87 }  // -87 ... 13
        var out = [Float](repeating: 0, count: xs.count)
        expVectorized(&out, xs, xs.count)
        var worst: Double = 0
        for (x, y) in zip(xs, out) { worst = max(worst, abs(Double(y) - exp(Double(x))) / exp(Double(x))) }
        XCTAssertLessThan(worst, 3e-7, "relative error of exp")
    }
}
