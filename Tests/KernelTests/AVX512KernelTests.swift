@testable import MAEKernels
import TestSupport
import XCTest

/// CAVX512's AVX-512 C loops (taken where the CPU has AVX-512) against the AVX2 Swift loops they
/// stand in for (every other CPU), on the same inputs.
final class AVX512KernelTests: XCTestCase {
    /// Forward (out, logSumExp) and backward (dQKV, bias gradients) through both tile paths agree
    /// to float rounding (the exponentials and biased scores are bit-identical; only the row sums'
    /// order differs), for every bias form: none, dense, dense shared over the batch, and decomposed
    /// on a 14 x 14 window grid (the C side's register-permute path, whole and with key tiles that
    /// cut kh runs) and on a 5 x 20 grid (its run path with partial vectors). rtol 1e-5, atol 1e-6.
    func testAVX512TilePassesMatchSwiftLoops() throws {
        try XCTSkipUnless(CPUFeatures.current.avx512, "this CPU has no AVX-512: only the Swift loops run")
        let saved = attentionTilesAVX512
        defer { attentionTilesAVX512 = saved }
        var rng = TestRandom(seed: 71)
        let (b, d, h) = (2, 32, 2)
        for (gh, gw, tiles) in [(14, 14, AttentionTiles()), (14, 14, AttentionTiles(queries: 24, keys: 40)),
                                (5, 20, AttentionTiles(queries: 16, keys: 36))] {
            let n = gh * gw
            let qkv = rng.array(b * n * 3 * d).map { $0 * 2 }, dOut = rng.array(b * n * d)
            let biases: [(String, BiasValues)] = [
                ("none", .none),
                ("dense", .dense(rng.array(b * h * n * n), shared: false)),
                ("shared", .dense(rng.array(h * n * n), shared: true)),
                ("decomposed", .decomposed(relH: rng.array(b * h * n * gh), relW: rng.array(b * h * n * gw),
                                           height: gh, width: gw)),
            ]
            let s = FlashAttentionSize(batch: b, tokens: n, width: d, heads: h, tiles: tiles)
            for (name, bias) in biases {
                let label = "\(name) \(gh)x\(gw) tiles \(tiles.queries)x\(tiles.keys)"
                attentionTilesAVX512 = false
                let (outSwift, lseSwift) = flashForward(qkv, bias, s)
                let backSwift = flashBackward(dOut, qkv, bias, s, start: 0.5)
                attentionTilesAVX512 = true
                let (outC, lseC) = flashForward(qkv, bias, s)
                let backC = flashBackward(dOut, qkv, bias, s, start: 0.5)
                assertClose(outC, outSwift, rtol: 1e-5, atol: 1e-6, "\(label) out")
                assertClose(lseC, lseSwift, rtol: 1e-5, atol: 1e-6, "\(label) logSumExp")
                assertClose(backC.dQKV, backSwift.dQKV, rtol: 1e-5, atol: 1e-6, "\(label) dQKV")
                XCTAssertEqual(backC.dBias.count, backSwift.dBias.count, label)
                for (i, (c, swift)) in zip(backC.dBias, backSwift.dBias).enumerated() {
                    assertClose(c, swift, rtol: 1e-5, atol: 1e-6, "\(label) dBias[\(i)]")
                }
            }
        }
    }

    /// GELU's C loop gives the Swift loop's values bit for bit, over both tails of Phi, zeros of
    /// either sign and lengths that leave partial vectors in every worker's range.
    func testGELUMatchesSwiftLoopBitForBit() throws {
        try XCTSkipUnless(CPUFeatures.current.avx512, "this CPU has no AVX-512: only the Swift loop runs")
        let saved = geluAVX512
        defer { geluAVX512 = saved }
        var rng = TestRandom(seed: 72)
        for count in [1, 15, 16, 1000, (1 << 15) + 7] {
            var x = rng.array(count).map { $0 * 6 }
            x[0] = -0.0
            if count > 2 { x[1] = 0; x[2] = -12 }
            var viaSwift = [Float](repeating: .nan, count: count), viaC = viaSwift
            geluAVX512 = false
            geluForward(out: &viaSwift, input: x, count: count)
            geluAVX512 = true
            geluForward(out: &viaC, input: x, count: count)
            XCTAssertEqual(viaC.map(\.bitPattern), viaSwift.map(\.bitPattern), "count \(count)")
        }
    }
}
