import MAEKernels
import TestSupport
import XCTest

/// An attention bias held in arrays, for tests.
enum BiasValues {
    case none
    case dense([Float], shared: Bool)
    case decomposed(relH: [Float], relW: [Float], height: Int, width: Int)

    /// Calls `body` with the kernel's view of this bias.
    func with<R>(_ body: (AttentionBias) -> R) -> R {
        switch self {
        case .none: return body(.none)
        case .dense(let b, let shared):
            return b.withUnsafeBufferPointer { body(.dense($0.baseAddress!, sharedOverBatch: shared)) }
        case .decomposed(let h, let w, let gh, let gw):
            return h.withUnsafeBufferPointer { hp in
                w.withUnsafeBufferPointer { wp in
                    body(.decomposed(relH: hp.baseAddress!, relW: wp.baseAddress!, height: gh, width: gw))
                }
            }
        }
    }

    /// Zero-based gradient buffers shaped as this bias ([] for none; dense: one; decomposed: h, w),
    /// starting at `start` to check that the backward accumulates.
    func gradientBuffers(start: Float) -> [[Float]] {
        switch self {
        case .none: return []
        case .dense(let b, _): return [[Float](repeating: start, count: b.count)]
        case .decomposed(let h, let w, _, _):
            return [[Float](repeating: start, count: h.count), [Float](repeating: start, count: w.count)]
        }
    }
}

/// (out (B,N,D), logSumExp (B,H,N)) of the fused forward.
func flashForward(_ qkv: [Float], _ bias: BiasValues, _ s: FlashAttentionSize) -> (out: [Float], lse: [Float]) {
    var out = [Float](repeating: .nan, count: s.batch * s.tokens * s.width)
    var lse = [Float](repeating: .nan, count: s.batch * s.heads * s.tokens)
    bias.with { b in
        flashAttentionForward(out: &out, logSumExp: &lse, qkv: qkv, bias: b, size: s)
    }
    return (out, lse)
}

/// (dQKV, bias gradients as `BiasValues.gradientBuffers`) of the fused backward, all starting at `start`.
func flashBackward(_ dOut: [Float], _ qkv: [Float], _ bias: BiasValues, _ s: FlashAttentionSize,
                   start: Float = 0) -> (dQKV: [Float], dBias: [[Float]]) {
    let (out, lse) = flashForward(qkv, bias, s)
    var dQKV = [Float](repeating: start, count: qkv.count)
    var grads = bias.gradientBuffers(start: start)
    bias.with { b in
        switch grads.count {
        case 0:
            flashAttentionBackward(dQKV: &dQKV, dOut: dOut, out: out, logSumExp: lse, qkv: qkv, bias: b, size: s)
        case 1:
            flashAttentionBackward(dQKV: &dQKV, dBias: .dense(&grads[0]), dOut: dOut, out: out, logSumExp: lse,
                                   qkv: qkv, bias: b, size: s)
        default:
            var (gh, gw) = (grads[0], grads[1])
            gh.withUnsafeMutableBufferPointer { h in
                gw.withUnsafeMutableBufferPointer { w in
                    flashAttentionBackward(dQKV: &dQKV, dBias: .decomposed(dRelH: h.baseAddress!, dRelW: w.baseAddress!),
                                           dOut: dOut, out: out, logSumExp: lse, qkv: qkv, bias: b, size: s)
                }
            }
            grads = [gh, gw]
        }
    }
    return (dQKV, grads)
}

final class FlashAttentionTests: XCTestCase {
    /// Default tiles (one partial tile at these N), and small odd tiles so every row's online
    /// softmax rescales several times and the last tiles are partial.
    static let tileChoices = [AttentionTiles(), AttentionTiles(queries: 8, keys: 16), AttentionTiles(queries: 7, keys: 5)]

    /// Runs `body` with 1 worker and with 16: the backward then takes its one-pass path (items
    /// owning whole (b, h) slices) and its two-pass path (items over tiles) on the same sizes.
    func withWorkerCounts(_ body: (String) throws -> Void) rethrows {
        let saved = Parallel.workers
        defer { Parallel.workers = saved }
        for workers in [1, 16] {
            Parallel.workers = workers
            try body("workers \(workers)")
        }
    }

    /// Against torch's scaled_dot_product_attention with a float attn_mask (the bias), for no
    /// bias, a dense (B*H, N, N) bias, a dense (H, N, N) bias broadcast over the batch, and the
    /// decomposed rel-pos form. Forward rtol 1e-4 atol 1e-5; gradients (accumulated onto 0.5)
    /// rtol 1e-3 atol 1e-5.
    func testFlashAttentionMatchesScaledDotProductAttention() throws {
        let fx = try AttentionFixture("flash_attention")
        for name in ["plain", "dense", "dense_shared", "decomposed", "decomposed_long"] {
            let sz = try fx.sizes(name)
            let qkv = try fx.floats("\(name)/qkv"), dOut = try fx.floats("\(name)/grad_out")
            let bias: BiasValues
            var expectedBiasGrads: [[Float]] = []
            if fx.has("\(name)/bias") {
                bias = .dense(try fx.floats("\(name)/bias"), shared: name == "dense_shared")
                expectedBiasGrads = [try fx.floats("\(name)/d_bias")]
            } else if fx.has("\(name)/rel_h") {
                bias = .decomposed(relH: try fx.floats("\(name)/rel_h"), relW: try fx.floats("\(name)/rel_w"),
                                   height: sz[4], width: sz[5])
                expectedBiasGrads = [try fx.floats("\(name)/d_rel_h"), try fx.floats("\(name)/d_rel_w")]
            } else {
                bias = .none
            }
            try withWorkerCounts { workers in for tiles in Self.tileChoices {
                let s = FlashAttentionSize(batch: sz[0], tokens: sz[1], width: sz[2], heads: sz[3], tiles: tiles)
                let label = "\(name) tiles \(tiles.queries)x\(tiles.keys) \(workers)"
                let (out, lse) = flashForward(qkv, bias, s)
                assertClose(out, try fx.floats("\(name)/out"), rtol: 1e-4, atol: 1e-5, "\(label) out")
                assertClose(lse, try fx.floats("\(name)/lse"), rtol: 1e-5, atol: 1e-5, "\(label) logSumExp")
                let (dQKV, dBias) = flashBackward(dOut, qkv, bias, s, start: 0.5)
                assertClose(dQKV, try fx.floats("\(name)/d_qkv").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5,
                            "\(label) dQKV")
                XCTAssertEqual(dBias.count, expectedBiasGrads.count, label)
                for (i, (got, want)) in zip(dBias, expectedBiasGrads).enumerated() {
                    assertClose(got, want.map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(label) dBias[\(i)]")
                }
            } }
        }
    }

    /// The fused kernel computes what the materialised `attentionForward/Backward` computes
    /// (which holds P (B,H,N,N)), at sizes that leave partial tiles: rtol 1e-4 forward, 1e-3 backward.
    func testFlashAttentionMatchesMaterialisedAttention() {
        var rng = TestRandom(seed: 41)
        for (b, n, d, h) in [(2, 37, 32, 4), (1, 150, 24, 2), (3, 9, 16, 1)] {
            let qkv = rng.array(b * n * 3 * d).map { $0 * 2 }, dOut = rng.array(b * n * d)
            var out = [Float](repeating: .nan, count: b * n * d), probs = [Float](repeating: .nan, count: b * h * n * n)
            attentionForward(out: &out, probs: &probs, qkv: qkv, batch: b, tokens: n, width: d, heads: h)
            var dRef = [Float](repeating: 0, count: qkv.count)
            attentionBackward(dQKV: &dRef, dOut: dOut, qkv: qkv, probs: probs, batch: b, tokens: n, width: d, heads: h)
            withWorkerCounts { workers in for tiles in Self.tileChoices {
                let s = FlashAttentionSize(batch: b, tokens: n, width: d, heads: h, tiles: tiles)
                let label = "B\(b) N\(n) D\(d) H\(h) tiles \(tiles.queries)x\(tiles.keys) \(workers)"
                assertClose(flashForward(qkv, .none, s).out, out, rtol: 1e-4, atol: 1e-5, "\(label) out")
                assertClose(flashBackward(dOut, qkv, .none, s).dQKV, dRef, rtol: 1e-3, atol: 1e-5, "\(label) dQKV")
            } }
        }
    }

    /// With a dense bias shared over the batch (BEiT's relative position bias), the materialised
    /// attention's forward, dQKV and accumulated dBias (summed over the images) equal the fused kernel's,
    /// on 1 and 16 workers (the materialised backward then splits over heads).
    func testMaterialisedAttentionWithSharedBiasMatchesFused() {
        var rng = TestRandom(seed: 43)
        for (b, n, d, h) in [(2, 37, 32, 4), (3, 10, 16, 1), (1, 65, 24, 3)] {
            let qkv = rng.array(b * n * 3 * d).map { $0 * 2 }, dOut = rng.array(b * n * d), bias = rng.array(h * n * n)
            withWorkerCounts { workers in
                var out = [Float](repeating: .nan, count: b * n * d), probs = [Float](repeating: .nan, count: b * h * n * n)
                attentionForward(out: &out, probs: &probs, qkv: qkv, bias: bias, batch: b, tokens: n, width: d, heads: h)
                var dRef = [Float](repeating: 0.5, count: qkv.count), dBiasRef = [Float](repeating: 0.5, count: bias.count)
                attentionBackward(dQKV: &dRef, dBias: &dBiasRef, dOut: dOut, qkv: qkv, probs: probs, batch: b, tokens: n,
                                  width: d, heads: h)
                let s = FlashAttentionSize(batch: b, tokens: n, width: d, heads: h, tiles: AttentionTiles(queries: 16, keys: 8))
                let label = "B\(b) N\(n) D\(d) H\(h) \(workers)"
                assertClose(out, flashForward(qkv, .dense(bias, shared: true), s).out, rtol: 1e-4, atol: 1e-5, "\(label) out")
                let (dQKV, dBias) = flashBackward(dOut, qkv, .dense(bias, shared: true), s, start: 0.5)
                assertClose(dRef, dQKV, rtol: 1e-3, atol: 1e-5, "\(label) dQKV")
                assertClose(dBiasRef, dBias[0], rtol: 1e-3, atol: 1e-5, "\(label) dBias")
            }
        }
    }

    /// Central differences (step 1e-2, loss in Double) of sum(out * r) against the analytic
    /// gradients of qkv and of every bias form, on 48 coordinates of each: rtol 1e-2, atol 1e-3. Small tiles, so the bias
    /// gradient of one row is summed over several key tiles and a kh run crosses a tile edge.
    func testFlashAttentionGradientsMatchFiniteDifferences() {
        var rng = TestRandom(seed: 42)
        let (b, gh, gw, d, h) = (2, 3, 4, 8, 2), n = gh * gw
        let s = FlashAttentionSize(batch: b, tokens: n, width: d, heads: h, tiles: AttentionTiles(queries: 5, keys: 3))
        let qkv = rng.array(b * n * 3 * d), r = rng.array(b * n * d)
        let dense = rng.array(b * h * n * n), shared = rng.array(h * n * n)
        let relH = rng.array(b * h * n * gh), relW = rng.array(b * h * n * gw)
        let biases: [(String, BiasValues, [[Float]], ([[Float]]) -> BiasValues)] = [
            ("none", .none, [], { _ in .none }),
            ("dense", .dense(dense, shared: false), [dense], { .dense($0[0], shared: false) }),
            ("shared", .dense(shared, shared: true), [shared], { .dense($0[0], shared: true) }),
            ("decomposed", .decomposed(relH: relH, relW: relW, height: gh, width: gw), [relH, relW],
             { .decomposed(relH: $0[0], relW: $0[1], height: gh, width: gw) }),
        ]
        for (name, bias, params, rebuild) in biases {
            let (dQKV, dBias) = flashBackward(r, qkv, bias, s)
            withWorkerCounts { workers in
                let again = flashBackward(r, qkv, bias, s)
                assertClose(again.dQKV, dQKV, rtol: 1e-5, atol: 1e-6, "\(name) dQKV \(workers)")
                for i in params.indices {
                    assertClose(again.dBias[i], dBias[i], rtol: 1e-5, atol: 1e-6, "\(name) dBias[\(i)] \(workers)")
                }
            }
            checkGradient("\(name) dQKV", input: qkv, analytic: dQKV, step: 1e-2, rtol: 1e-2, atol: 1e-3) {
                dot(flashForward($0, bias, s).out, r)
            }
            for i in params.indices {
                checkGradient("\(name) dBias[\(i)]", input: params[i], analytic: dBias[i], step: 1e-2,
                              rtol: 1e-2, atol: 1e-3) { p in
                    var changed = params
                    changed[i] = p
                    return dot(flashForward(qkv, rebuild(changed), s).out, r)
                }
            }
        }
    }

    /// Scores far apart (a large-magnitude bias on one key per row) must not overflow the online
    /// softmax: the result is finite and equals the materialised softmax's.
    func testFlashAttentionLargeScoresStayFinite() {
        var rng = TestRandom(seed: 43)
        let (n, d) = (20, 8)
        let s = FlashAttentionSize(batch: 1, tokens: n, width: d, heads: 1, tiles: AttentionTiles(queries: 4, keys: 3))
        let qkv = rng.array(n * 3 * d)
        var bias = [Float](repeating: 0, count: n * n)
        for i in 0..<n { bias[i * n + (7 * i) % n] = i.isMultiple(of: 2) ? 300 : -300 }
        let (out, lse) = flashForward(qkv, .dense(bias, shared: true), s)
        XCTAssertTrue(out.allSatisfy(\.isFinite) && lse.allSatisfy(\.isFinite))
        // The reference: dense softmax in Double.
        var expected = [Float](repeating: 0, count: n * d)
        let scale = 1 / Double(d).squareRoot()
        for i in 0..<n {
            var scores = [Double](repeating: 0, count: n)
            for j in 0..<n {
                var qk = 0.0
                for c in 0..<d { qk += Double(qkv[i * 3 * d + c]) * Double(qkv[j * 3 * d + d + c]) }
                scores[j] = qk * scale + Double(bias[i * n + j])
            }
            let mx = scores.max()!
            let weights = scores.map { Foundation.exp($0 - mx) }
            let sum = weights.reduce(0, +)
            for c in 0..<d {
                var acc = 0.0
                for j in 0..<n { acc += weights[j] * Double(qkv[j * 3 * d + 2 * d + c]) }
                expected[i * d + c] = Float(acc / sum)
            }
        }
        assertClose(out, expected, rtol: 1e-4, atol: 1e-5, "large scores out")
    }
}
