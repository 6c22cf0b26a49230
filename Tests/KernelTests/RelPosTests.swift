import MAEKernels
import TestSupport
import XCTest

/// R (qS, kS, C) from a table (L, C).
func relPosGather(_ table: [Float], _ s: RelPosGatherSize) -> [Float] {
    apply(table, count: s.querySize * s.keySize * s.channels) { relPosGatherForward(out: $0, table: $1, size: s) }
}

/// The tables' gradient from dR, accumulated onto `start`.
func relPosGatherGrad(_ dR: [Float], _ s: RelPosGatherSize, start: Float = 0) -> [Float] {
    apply(dR, count: s.tableLength * s.channels, start: start) { relPosGatherBackward(dTable: $0, dOut: $1, size: s) }
}

/// ViTDet's attention core over a (gh, gw) grid of tokens, composed from the kernels:
/// gather Rh, Rw from the tables, relH / relW from the unscaled q, fused attention with the
/// decomposed bias. Forward and the backward of sum(out * dOut) to qkv and both tables.
struct RelPosAttention {
    let batch, width, heads, gh, gw, lengthH, lengthW: Int
    var hd: Int { width / heads }
    var tokens: Int { gh * gw }
    var gatherH: RelPosGatherSize { RelPosGatherSize(querySize: gh, keySize: gh, tableLength: lengthH, channels: hd) }
    var gatherW: RelPosGatherSize { RelPosGatherSize(querySize: gw, keySize: gw, tableLength: lengthW, channels: hd) }
    var terms: RelPosTermsSize { RelPosTermsSize(batch: batch, width: width, heads: heads, gridHeight: gh, gridWidth: gw) }
    func attention(_ tiles: AttentionTiles) -> FlashAttentionSize {
        FlashAttentionSize(batch: batch, tokens: tokens, width: width, heads: heads, tiles: tiles)
    }

    func relTerms(_ qkv: [Float], _ rh: [Float], _ rw: [Float]) -> (relH: [Float], relW: [Float]) {
        var relH = [Float](repeating: .nan, count: batch * heads * tokens * gh)
        var relW = [Float](repeating: .nan, count: batch * heads * tokens * gw)
        relPosTermsForward(relH: &relH, relW: &relW, qkv: qkv, rh: rh, rw: rw, size: terms)
        return (relH, relW)
    }

    func forward(_ qkv: [Float], _ tableH: [Float], _ tableW: [Float], tiles: AttentionTiles = AttentionTiles()) -> [Float] {
        let (relH, relW) = relTerms(qkv, relPosGather(tableH, gatherH), relPosGather(tableW, gatherW))
        return flashForward(qkv, .decomposed(relH: relH, relW: relW, height: gh, width: gw), attention(tiles)).out
    }

    func backward(_ dOut: [Float], _ qkv: [Float], _ tableH: [Float], _ tableW: [Float],
                  tiles: AttentionTiles = AttentionTiles()) -> (dQKV: [Float], dTableH: [Float], dTableW: [Float]) {
        let rh = relPosGather(tableH, gatherH), rw = relPosGather(tableW, gatherW)
        let (relH, relW) = relTerms(qkv, rh, rw)
        var (dQKV, dRel) = flashBackward(dOut, qkv, .decomposed(relH: relH, relW: relW, height: gh, width: gw),
                                         attention(tiles))
        var dRh = [Float](repeating: 0, count: rh.count), dRw = [Float](repeating: 0, count: rw.count)
        relPosTermsBackward(dQKV: &dQKV, dRh: &dRh, dRw: &dRw, dRelH: dRel[0], dRelW: dRel[1], qkv: qkv,
                            rh: rh, rw: rw, size: terms)
        return (dQKV, relPosGatherGrad(dRh, gatherH), relPosGatherGrad(dRw, gatherW))
    }
}

final class RelPosTests: XCTestCase {
    /// get_rel_pos: the 14x14 window's own 27-row table, tables resized up (7 -> 17) and down
    /// (11 -> 7), and unequal query / key sizes (the scaled coordinates), forward and the table
    /// gradient (accumulated onto 0.5). The gather is exact; the resize rtol 1e-5.
    func testGatherMatchesDetectron2() throws {
        let fx = try AttentionFixture("relpos")
        for name in ["gather_window", "gather_up", "gather_down", "gather_q_lt_k", "gather_q_gt_k_resized"] {
            let z = try fx.sizes(name)
            let s = RelPosGatherSize(querySize: z[0], keySize: z[1], tableLength: z[2], channels: z[3])
            assertClose(relPosGather(try fx.floats("\(name)/table"), s), try fx.floats("\(name)/rows"),
                        rtol: 1e-5, atol: 1e-6, "\(name) rows")
            assertClose(relPosGatherGrad(try fx.floats("\(name)/grad_rows"), s, start: 0.5),
                        try fx.floats("\(name)/d_table").map { $0 + 0.5 }, rtol: 1e-5, atol: 1e-5, "\(name) dTable")
        }
    }

    /// add_decomposed_rel_pos's rel_h / rel_w on a 14x14 window and a 5x7 grid (tables resized),
    /// from q inside the packed qkv; backward to q and through the gather to both tables.
    /// rtol 1e-4 atol 1e-5 forward, rtol 1e-3 atol 1e-5 gradients.
    func testTermsMatchDetectron2() throws {
        let fx = try AttentionFixture("relpos")
        for name in ["terms_window", "terms_rect"] {
            let z = try fx.sizes(name)
            let core = RelPosAttention(batch: z[0], width: z[2], heads: z[3], gh: z[4], gw: z[5], lengthH: z[6], lengthW: z[6])
            let qkv = try fx.floats("\(name)/qkv")
            let rh = relPosGather(try fx.floats("\(name)/rel_pos_h"), core.gatherH)
            let rw = relPosGather(try fx.floats("\(name)/rel_pos_w"), core.gatherW)
            let (relH, relW) = core.relTerms(qkv, rh, rw)
            assertClose(relH, try fx.floats("\(name)/rel_h"), rtol: 1e-4, atol: 1e-5, "\(name) relH")
            assertClose(relW, try fx.floats("\(name)/rel_w"), rtol: 1e-4, atol: 1e-5, "\(name) relW")
            var dQKV = [Float](repeating: 0.5, count: qkv.count)
            var dRh = [Float](repeating: 0, count: rh.count), dRw = [Float](repeating: 0, count: rw.count)
            relPosTermsBackward(dQKV: &dQKV, dRh: &dRh, dRw: &dRw, dRelH: try fx.floats("\(name)/grad_rel_h"),
                                dRelW: try fx.floats("\(name)/grad_rel_w"), qkv: qkv, rh: rh, rw: rw, size: core.terms)
            assertClose(dQKV, try fx.floats("\(name)/d_qkv").map { $0 + 0.5 }, rtol: 1e-3, atol: 1e-5, "\(name) dQKV")
            assertClose(relPosGatherGrad(dRh, core.gatherH), try fx.floats("\(name)/d_rel_pos_h"),
                        rtol: 1e-3, atol: 1e-5, "\(name) dRelPosH")
            assertClose(relPosGatherGrad(dRw, core.gatherW), try fx.floats("\(name)/d_rel_pos_w"),
                        rtol: 1e-3, atol: 1e-5, "\(name) dRelPosW")
        }
    }

    /// A ViTDet window block's attention core as detectron2 writes it ((q*scale) k^T, +
    /// decomposed rel-pos with the unscaled q, softmax, v) against the kernels composed, on a batch
    /// of 14x14 windows with their own 27-row tables. rtol 1e-4 forward, 1e-3 gradients.
    func testViTDetWindowAttentionCoreMatchesDetectron2() throws {
        let fx = try AttentionFixture("relpos")
        let name = "block_window"
        let z = try fx.sizes(name)
        let core = RelPosAttention(batch: z[0], width: z[2], heads: z[3], gh: z[4], gw: z[5], lengthH: z[6], lengthW: z[6])
        let qkv = try fx.floats("\(name)/qkv"), dOut = try fx.floats("\(name)/grad_out")
        let tableH = try fx.floats("\(name)/rel_pos_h"), tableW = try fx.floats("\(name)/rel_pos_w")
        assertClose(core.forward(qkv, tableH, tableW), try fx.floats("\(name)/out"), rtol: 1e-4, atol: 1e-5, "\(name) out")
        let g = core.backward(dOut, qkv, tableH, tableW)
        assertClose(g.dQKV, try fx.floats("\(name)/d_qkv"), rtol: 1e-3, atol: 1e-5, "\(name) dQKV")
        assertClose(g.dTableH, try fx.floats("\(name)/d_rel_pos_h"), rtol: 1e-3, atol: 1e-4, "\(name) dRelPosH")
        assertClose(g.dTableW, try fx.floats("\(name)/d_rel_pos_w"), rtol: 1e-3, atol: 1e-4, "\(name) dRelPosW")
    }

    /// The terms on ViTDet's 64x64 global grid (one head at width 4) with 27-row tables resized
    /// to 127, as a window-trained table is used in a global block. relH / relW compared on every
    /// 31st query (the fixture keeps those rows); the gradients of sum(relH gH + relW gW) for the
    /// smooth gH, gW both sides compute (cos(0.1 n + 0.7 k + phase)) in full. The table gradients
    /// sum 4096 x 64 terms each: rtol 2e-3 atol 1e-3 there.
    func testGlobalGridTermsMatchDetectron2() throws {
        let fx = try AttentionFixture("relpos_global")
        let name = "terms_global"
        let z = try fx.sizes(name)
        let core = RelPosAttention(batch: z[0], width: z[2], heads: z[3], gh: z[4], gw: z[5], lengthH: z[6], lengthW: z[6])
        let step = z[7], n = core.tokens
        let qkv = try fx.floats("\(name)/qkv")
        let rh = relPosGather(try fx.floats("\(name)/rel_pos_h"), core.gatherH)
        let rw = relPosGather(try fx.floats("\(name)/rel_pos_w"), core.gatherW)
        let (relH, relW) = core.relTerms(qkv, rh, rw)
        func rows(_ t: [Float], _ k: Int) -> [Float] {
            stride(from: 0, to: n, by: step).flatMap { t[($0 * k)..<($0 * k + k)] }
        }
        assertClose(rows(relH, core.gh), try fx.floats("\(name)/rel_h_rows"), rtol: 1e-4, atol: 1e-5, "relH rows")
        assertClose(rows(relW, core.gw), try fx.floats("\(name)/rel_w_rows"), rtol: 1e-4, atol: 1e-5, "relW rows")
        func smooth(_ k: Int, phase: Double) -> [Float] {
            (0..<(n * k)).map { Float(cos(0.1 * Double($0 / k) + 0.7 * Double($0 % k) + phase)) }
        }
        var dQKV = [Float](repeating: 0, count: qkv.count)
        var dRh = [Float](repeating: 0, count: rh.count), dRw = [Float](repeating: 0, count: rw.count)
        relPosTermsBackward(dQKV: &dQKV, dRh: &dRh, dRw: &dRw, dRelH: smooth(core.gh, phase: 0),
                            dRelW: smooth(core.gw, phase: 1), qkv: qkv, rh: rh, rw: rw, size: core.terms)
        let dq = (0..<n).flatMap { dQKV[($0 * 3 * core.width)..<($0 * 3 * core.width + core.width)] }
        assertClose(dq, try fx.floats("\(name)/d_q"), rtol: 1e-3, atol: 1e-5, "dQ")
        XCTAssertTrue((0..<n).allSatisfy { t in dQKV[(t * 3 * core.width + core.width)..<((t + 1) * 3 * core.width)].allSatisfy { $0 == 0 } },
                      "only the q part of dQKV is touched")
        assertClose(relPosGatherGrad(dRh, core.gatherH), try fx.floats("\(name)/d_rel_pos_h"),
                    rtol: 2e-3, atol: 1e-3, "dRelPosH")
        assertClose(relPosGatherGrad(dRw, core.gatherW), try fx.floats("\(name)/d_rel_pos_w"),
                    rtol: 2e-3, atol: 1e-3, "dRelPosW")
    }

    /// Central differences through the whole composition (gather with resize on both axes, terms,
    /// fused attention with small tiles), on 48 coordinates of qkv and every table coordinate:
    /// rtol 1e-2, atol 1e-3.
    func testRelPosAttentionGradientsMatchFiniteDifferences() {
        var rng = TestRandom(seed: 51)
        // Grid 3x4: tables resized 4 -> 5 rows (height) and 9 -> 7 (width).
        let core = RelPosAttention(batch: 2, width: 8, heads: 2, gh: 3, gw: 4, lengthH: 4, lengthW: 9)
        let tiles = AttentionTiles(queries: 5, keys: 3)
        let qkv = rng.array(core.batch * core.tokens * 3 * core.width)
        let tableH = rng.array(core.lengthH * core.hd), tableW = rng.array(core.lengthW * core.hd)
        let r = rng.array(core.batch * core.tokens * core.width)
        let g = core.backward(r, qkv, tableH, tableW, tiles: tiles)
        checkGradient("dQKV", input: qkv, analytic: g.dQKV, step: 1e-2, rtol: 1e-2, atol: 1e-3) {
            dot(core.forward($0, tableH, tableW, tiles: tiles), r)
        }
        checkGradient("dTableH", input: tableH, analytic: g.dTableH, step: 1e-2, rtol: 1e-2, atol: 1e-3, samples: 1000) {
            dot(core.forward(qkv, $0, tableW, tiles: tiles), r)
        }
        checkGradient("dTableW", input: tableW, analytic: g.dTableW, step: 1e-2, rtol: 1e-2, atol: 1e-3, samples: 1000) {
            dot(core.forward(qkv, tableH, $0, tiles: tiles), r)
        }
    }

    /// detectron2's trap: the terms are q . R with the UNSCALED q (the scores use q * Dh^-0.5).
    /// One token, one head: relH must be exactly q . Rh, not Dh^-0.5 q . Rh.
    func testTermsUseUnscaledQuery() {
        let core = RelPosAttention(batch: 1, width: 16, heads: 1, gh: 1, gw: 1, lengthH: 1, lengthW: 1)
        var qkv = [Float](repeating: 0, count: 48)
        for c in 0..<16 { qkv[c] = 1 }
        let rh = [Float](repeating: 0.25, count: 16), rw = [Float](repeating: 0.5, count: 16)
        let (relH, relW) = core.relTerms(qkv, rh, rw)
        XCTAssertEqual(relH, [4])
        XCTAssertEqual(relW, [8])
    }
}
