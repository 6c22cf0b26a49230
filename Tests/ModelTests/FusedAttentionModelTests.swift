import XCTest
import MAEKernels
@testable import MAEModels
import TestSupport

/// The stacks' fused attention (sequences of at least `fusedAttentionTokens`, FlashAttention.swift)
/// against the materialised one: the same model gives the same outputs and parameter gradients,
/// keeps logsumexp (B,H,N) instead of probs (B,H,N,N), and the memory estimate drops the N^2 term.
final class FusedAttentionModelTests: XCTestCase {
    /// Gradients of every parameter, by name (some are zero: frozen sin-cos tables, dropped branches).
    func gradients(_ m: VisionTransformer) -> [(String, [Float])] {
        m.params.specs.map { ($0.name, Array(m.params.grad($0.name))) }
    }

    func assertSameGradients(_ fused: [(String, [Float])], _ materialised: [(String, [Float])],
                             file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(fused.map(\.0), materialised.map(\.0), file: file, line: line)
        for ((name, f), (_, e)) in zip(fused, materialised) {
            if name.contains("attn.qkv") {
                XCTAssertGreaterThan(e.map(abs).max()!, 1e-4, "\(name) gets a gradient", file: file, line: line)
            }
            assertClose(f, e, rtol: 1e-4, atol: 1e-5, name, file: file, line: line)
        }
    }

    /// A classifier on 145 tokens (12 x 12 patches + cls: three query tiles and two key tiles, both
    /// ragged), drop path on: logits, loss and every gradient match the materialised path.
    func testClassifierForwardAndBackwardMatchTheMaterialisedPath() throws {
        let m = try VisionTransformer(config: ViTConfig(imgSize: 48, patchSize: 4, embedDim: 16, depth: 2, numHeads: 2,
                                                        numClasses: 3, pooling: .cls))
        m.initializeWeights(seed: 6, headStd: 0.5)
        m.dropPath = 0.3
        let x = Tensor([2, 3, 48, 48], randomValues(2 * 3 * 48 * 48, seed: 18)), t: [Float] = [1, 0, 0, 0, 0, 1]
        func step(fusedFrom tokens: Int) -> (logits: [Float], loss: Float, grads: [(String, [Float])], fused: Bool) {
            m.fusedAttentionTokens = tokens
            m.params.zeroGrads()
            let ctx = m.forwardLogits(images: x.data, batch: 2, training: true, seed: 9)
            let loss = m.classificationLoss(ctx, targets: t)
            m.backwardClassification(ctx)
            let buffers = ctx.encoder.stack.buffers
            XCTAssertEqual(buffers.acts[0].scores.count, 2 * 2 * 145 * (buffers.fused ? 1 : 145))
            return (ctx.logits!.array, loss, gradients(m), buffers.fused)
        }
        let materialised = step(fusedFrom: .max), fused = step(fusedFrom: 145)
        XCTAssertFalse(materialised.fused)
        XCTAssertTrue(fused.fused)
        assertClose(fused.logits, materialised.logits, rtol: 1e-4, atol: 1e-5, "logits")
        XCTAssertEqual(fused.loss, materialised.loss, accuracy: 1e-5)
        assertSameGradients(fused.grads, materialised.grads)
        XCTAssertFalse(step(fusedFrom: 146).fused, "145 tokens stay materialised below the threshold")
    }

    /// MAE pretraining with the threshold between the encoder's 73 tokens (materialised) and the
    /// decoder's 145 (fused): loss and every gradient match the all-materialised model.
    func testPretrainingWithAFusedDecoderMatchesTheMaterialisedPath() throws {
        let m = try VisionTransformer(config: ViTConfig(imgSize: 48, patchSize: 4, embedDim: 16, depth: 2, numHeads: 2,
                                                        decoder: DecoderConfig(embedDim: 8, depth: 1, numHeads: 2)))
        m.initializeWeights(seed: 7)
        let x = Tensor([2, 3, 48, 48], randomValues(2 * 3 * 48 * 48, seed: 19))
        let mask = PatchMask(noise: randomValues(2 * 144, seed: 20), batch: 2, numPatches: 144, maskRatio: 0.5)
        func step(fusedFrom tokens: Int) -> (loss: Float, grads: [(String, [Float])], fused: [Bool]) {
            m.fusedAttentionTokens = tokens
            m.params.zeroGrads()
            let ctx = m.forwardDecoder(m.forwardEncoder(images: x.data, batch: 2, mask: mask, training: true))
            let loss = m.forwardLoss(ctx, images: x.data)
            m.backwardPretrain(ctx)
            return (loss, gradients(m), [ctx.encoder.stack.fused, ctx.stack.fused])
        }
        let materialised = step(fusedFrom: .max), fused = step(fusedFrom: 100)
        XCTAssertEqual(materialised.fused, [false, false])
        XCTAssertEqual(fused.fused, [false, true])
        XCTAssertEqual(fused.loss, materialised.loss, accuracy: 1e-5)
        assertSameGradients(fused.grads, materialised.grads)
    }

    /// The estimate counts B * H * N scores per block on the fused path, B * H * N^2 below it.
    func testMemoryEstimateCountsLinearScoresOnTheFusedPath() throws {
        let c = ViTConfig(imgSize: 64, patchSize: 2, embedDim: 16, depth: 2, numHeads: 2)
        let m = try VisionTransformer(config: c)
        let n = Double(c.numPatches + 1), b = 3.0, h = Double(c.numHeads)
        m.fusedAttentionTokens = .max
        let materialised = m.peakMemoryBytes(batch: Int(b), training: true)
        m.fusedAttentionTokens = c.numPatches + 1
        let fused = m.peakMemoryBytes(batch: Int(b), training: true)
        // Per block the scores go from B*H*N^2 to B*H*N floats; the backward's scratch from N^2 to B*H*N.
        let perBlock = b * h * n * n - b * h * n, scratch = n * n - b * h * n
        XCTAssertEqual(materialised - fused, 4 * (Double(c.depth) * perBlock + scratch), accuracy: 1)
    }
}
