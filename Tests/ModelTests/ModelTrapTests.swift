import XCTest
import MAEFormats
import MAEKernels
@testable import MAEModels
import TestSupport

/// MAE's layout conventions, each a named test.
final class ModelTrapTests: XCTestCase {
    /// patchify is (h, w, p, q, c): channels last inside a patch, patches row-major.
    func testPatchifyOrder() {
        let c = 3, s = 4, p = 2
        var img = [Float](repeating: 0, count: c * s * s)
        for ch in 0..<c { for y in 0..<s { for x in 0..<s { img[(ch * s + y) * s + x] = Float(ch * 100 + y * 10 + x) } } }
        var out = [Float](repeating: 0, count: img.count)
        patchify(&out, images: img, batch: 1, channels: c, imgSize: s, patch: p)
        // Patch 1 is the top-right one (row 0, column 1); its first pixel (0, 2) in channels 0, 1, 2.
        XCTAssertEqual(Array(out[12..<18]), [2, 102, 202, 3, 103, 203])
        var back = [Float](repeating: 0, count: img.count)
        unpatchify(&back, patches: out, batch: 1, channels: c, imgSize: s, patch: p)
        XCTAssertEqual(back, img, "unpatchify inverts patchify")
    }

    /// qkv rows are [q | k | v] with heads contiguous: putting all of the signal in the v block of
    /// head 1 must move only head 1's output columns.
    func testQKVOrderHeadsContiguous() {
        let b = 1, n = 3, d = 8, h = 2
        var qkv = [Float](repeating: 0, count: n * 3 * d)
        for t in 0..<n { for i in 0..<4 { qkv[t * 3 * d + 2 * d + 4 + i] = Float(t + 1) } }  // v, head 1
        let out = Tensor([b, n, d]), probs = Tensor([b, h, n, n])
        attentionForward(out: out.data, probs: probs.data, qkv: qkv, batch: b, tokens: n, width: d, heads: h)
        for t in 0..<n {
            XCTAssertEqual(Array(out.array[(t * d)..<(t * d + 4)]), [0, 0, 0, 0], "head 0 untouched")
            XCTAssertEqual(Array(out.array[(t * d + 4)..<(t * d + 8)]), [2, 2, 2, 2], "head 1 averages v (q = k = 0)")
        }
    }

    /// The fixed pos_embed is MAE's 2-D sin-cos table, cls row zero, column index in the first half.
    func testSinCosPositionEmbeddingMatchesCheckpoint() throws {
        let f = try SafeTensors.read(contentsOf: fixtureURL("mae_tiny.safetensors"))
        assertClose(sinCosPositionEmbedding(width: 64, grid: 4), f.tensors["pos_embed"]!.floats,
                    rtol: 1e-5, atol: 1e-6, "pos_embed")
        assertClose(sinCosPositionEmbedding(width: 32, grid: 4), f.tensors["decoder_pos_embed"]!.floats,
                    rtol: 1e-5, atol: 1e-6, "decoder_pos_embed")
    }

    /// Presets carry MAE's widths, depths and head counts; bad shapes are refused in one sentence.
    func testPresetsAndValidation() throws {
        let b = ModelPreset(name: "ViT-B/16")!.config
        XCTAssertEqual([b.embedDim, b.depth, b.numHeads, b.patchSize], [768, 12, 12, 16])
        XCTAssertEqual(ModelPreset(name: "vit_huge_patch14")!.config.patchSize, 14)
        XCTAssertEqual(ModelPreset(name: "large")!.config.numHeads, 16)
        XCTAssertNil(ModelPreset(name: "vit_gigantic"))
        var c = b
        c.imgSize = 225
        XCTAssertThrowsError(try VisionTransformer(config: c)) { error in
            XCTAssertEqual("\(error)", "Invalid model configuration: image size 225 is not divisible by patch size 16.")
        }
        c = b
        c.numHeads = 7
        XCTAssertThrowsError(try VisionTransformer(config: c))
    }

    /// A training step on the small preset lowers the MAE loss (the pieces fit together end to end).
    func testMAEStepsLowerTheLoss() throws {
        var c = ModelPreset.shapes.config
        c.depth = 2
        c.decoder = DecoderConfig(embedDim: 32, depth: 1, numHeads: 2)
        let model = try VisionTransformer(config: c)
        model.initializeWeights(seed: 1)
        let imgs = Tensor([2, 3, 32, 32], randomValues(2 * 3 * 32 * 32, seed: 3))
        let opt = AdamW(count: model.params.layout.totalCount,
                        groups: ParameterGroups(layout: model.params.layout, depth: c.depth), beta2: 0.95)
        let mask = PatchMask(noise: randomValues(2 * 64, seed: 4), batch: 2, numPatches: 64, maskRatio: 0.75)
        var losses: [Float] = []
        for _ in 0..<5 {
            model.params.zeroGrads()
            let decoded = model.forwardDecoder(model.forwardEncoder(images: imgs.data, batch: 2, mask: mask, training: true))
            losses.append(model.forwardLoss(decoded, images: imgs.data))
            model.backwardPretrain(decoded)
            opt.step(model.params, lr: 1e-3)
        }
        XCTAssertLessThan(losses.last!, losses.first!, "losses \(losses)")
    }
}
