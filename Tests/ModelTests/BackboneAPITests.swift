import XCTest
import MAEFormats
import MAEKernels
@testable import MAEModels
import TestSupport

/// The backbone API dense heads drive: block outputs of any input size with an explicit context,
/// and the public backward from gradients of those outputs (finite differences), pos_embed resized
/// in the forward (gradient reaching the stored table) or once at load (the same numbers), and
/// contexts that do not share state.
final class BackboneAPITests: XCTestCase {
    /// A 2-block encoder on a 2x2 grid (16 px, 8 px patches), weights away from their initial zeros.
    func model(pooling: Pooling, imgSize: Int = 16, seed: UInt64 = 1) throws -> VisionTransformer {
        let m = try VisionTransformer(config: ViTConfig(imgSize: imgSize, patchSize: 8, embedDim: 16, depth: 2,
                                                        numHeads: 2, pooling: pooling))
        m.initializeWeights(seed: seed)
        for spec in m.params.specs where spec.name.hasPrefix("pos_embed") || spec.name.hasSuffix("_token")
            || spec.name.hasSuffix("norm.bias") || spec.name.hasSuffix("norm.weight") {
            let v = m.params.value(spec.name), r = randomValues(v.count, seed: seed + 7, scale: 0.5)
            for i in 0..<v.count { v[i] += r[i] }
        }
        return m
    }

    /// loss = sum_i <w_i, block_i output> (+ <w_out, output>), in Double.
    func dot(_ t: Tensor, _ w: Tensor) -> Double {
        (0..<t.count).reduce(0) { $0 + Double(t[$1]) * Double(w[$1]) }
    }

    /// Finite differences of `loss` against the analytic gradient of parameter `name` (or of the images).
    func check(_ m: VisionTransformer, _ name: String, analytic: [Float], loss: @escaping () -> Double) {
        let v = m.params.value(name), start = Array(v)
        XCTAssertGreaterThan(analytic.map(abs).max()!, 1e-4, "\(name) gets a gradient")
        checkGradient(name, input: start, analytic: analytic, step: 1e-2, samples: 24) { x in
            for i in 0..<v.count { v[i] = x[i] }
            defer { for i in 0..<v.count { v[i] = start[i] } }
            return loss()
        }
    }

    /// ViTDet's use: no cls token, 24x24 images (3x3 grid) on a 2x2 pos_embed resized in the forward,
    /// a loss on the outputs of both blocks; parameters and the images get the finite-difference gradient.
    func testBackwardFromTwoBlockOutputsWithPositionResizedInTheForward() throws {
        let m = try model(pooling: .avg)
        let images = Tensor([2, 3, 24, 24], randomValues(2 * 3 * 24 * 24, seed: 2))
        let n = 9, d = 16
        let w0 = Tensor([2, n, d], randomValues(2 * n * d, seed: 3)), w1 = Tensor([2, n, d], randomValues(2 * n * d, seed: 4))
        func forward() -> EncoderContext {
            m.forwardEncoder(images: images.data, batch: 2, height: 24, width: 24, blocks: [0, 1], finalOutput: false,
                             prefixTokens: false, training: true)
        }
        func loss() -> Double { let c = forward(); return dot(c.blockOutput(0), w0) + dot(c.blockOutput(1), w1) }
        let ctx = forward()
        XCTAssertEqual(ctx.blockOutput(1).shape, [2 * n, d])
        m.params.zeroGrads()
        let dImages = try XCTUnwrap(m.backwardEncoder(ctx, blockGradients: [0: w0, 1: w1], inputGradient: true))
        for name in ["pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight"] {
            check(m, name, analytic: Array(m.params.grad(name)), loss: loss)
        }
        // The cls row of pos_embed and cls_token are not in the sequence: no gradient.
        XCTAssertEqual(Array(m.params.grad("pos_embed")[0..<d]), [Float](repeating: 0, count: d))
        XCTAssertEqual(Array(m.params.grad("cls_token")), [Float](repeating: 0, count: d))
        let start = images.array
        checkGradient("images", input: start, analytic: dImages.array, step: 1e-2, samples: 24) { x in
            images.data.update(from: x, count: x.count)
            defer { images.data.update(from: start, count: start.count) }
            return loss()
        }
    }

    /// cls kept, the final norm's output and block 0 both in the loss (two gradients meeting below
    /// the norm), on a resized grid: cls_token, pos_embed (cls row included) and norm get their gradient.
    func testBackwardFromABlockAndTheNormedOutput() throws {
        let m = try model(pooling: .cls)
        let images = Tensor([2, 3, 24, 24], randomValues(2 * 3 * 24 * 24, seed: 5))
        let n = 10, d = 16
        let w0 = Tensor([2, n, d], randomValues(2 * n * d, seed: 6)), wOut = Tensor([2, n, d], randomValues(2 * n * d, seed: 7))
        let w1 = Tensor([2, n, d], randomValues(2 * n * d, seed: 8))
        func forward() -> EncoderContext {
            m.forwardEncoder(images: images.data, batch: 2, height: 24, width: 24, blocks: [0, 1], training: true)
        }
        func loss() -> Double {
            let c = forward()
            return dot(c.blockOutput(0), w0) + dot(c.blockOutput(1), w1) + dot(c.output, wOut)
        }
        let ctx = forward()
        m.params.zeroGrads()
        m.backwardEncoder(ctx, blockGradients: [0: w0, 1: w1], outputGradient: wOut)
        for name in ["cls_token", "pos_embed", "norm.weight", "blocks.0.norm1.weight", "blocks.1.attn.proj.weight"] {
            check(m, name, analytic: Array(m.params.grad(name)), loss: loss)
        }
    }

    /// pos_embed resized in the forward gives what resizing it once at load gives (mmseg), exactly.
    func testResizeInTheForwardEqualsResizeAtLoad() throws {
        let small = try model(pooling: .cls)
        let large = try VisionTransformer(config: ViTConfig(imgSize: 24, patchSize: 8, embedDim: 16, depth: 2,
                                                            numHeads: 2, pooling: .cls))
        for spec in large.params.specs {
            var values = Array(small.params.value(spec.name))
            if spec.name == "pos_embed" { values = resizePositionEmbedding(values, width: 16, from: 2, to: 3) }
            try large.params.set(spec.name, shape: spec.shape, values)
        }
        let images = Tensor([2, 3, 24, 24], randomValues(2 * 3 * 24 * 24, seed: 9))
        let resizedInForward = small.forwardEncoder(images: images.data, batch: 2, height: 24, width: 24).output.array
        XCTAssertEqual(resizedInForward, large.forwardEncoder(images: images.data, batch: 2).output.array)
    }

    /// Inference keeps the blocks asked for (copies, as the ping-pong buffers move on) and stops after
    /// the highest when the final output is not wanted; they equal the training-mode outputs.
    func testInferenceBlockOutputsEqualTrainingOnes() throws {
        let m = try model(pooling: .avg)
        let images = Tensor([3, 3, 16, 16], randomValues(3 * 3 * 16 * 16, seed: 10))
        let eval = m.forwardEncoder(images: images.data, batch: 3, blocks: [0, 1], finalOutput: false)
        let train = m.forwardEncoder(images: images.data, batch: 3, blocks: [0, 1], training: true)
        for i in [0, 1] { XCTAssertEqual(eval.blockOutput(i).array, train.blockOutput(i).array, "block \(i)") }
        XCTAssertEqual(m.forwardEncoder(images: images.data, batch: 3, blocks: [0], finalOutput: false).blockOutput(0).array,
                       train.blockOutput(0).array)
    }

    /// Gradients of every parameter after one backward, as arrays.
    func gradients(_ m: VisionTransformer) -> [[Float]] { m.params.specs.map { Array(m.params.grad($0.name)) } }

    /// Two classifier forwards in flight (different batches, drop path on) backpropagated in either
    /// order give each the gradients it gives alone, bit for bit.
    func testTwoClassifierContextsInFlightBackpropagateInEitherOrder() throws {
        let m = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 8, embedDim: 16, depth: 2, numHeads: 2,
                                                        numClasses: 3, pooling: .avg))
        m.initializeWeights(seed: 3, headStd: 0.5)
        m.dropPath = 0.5
        let a = Tensor([2, 3, 16, 16], randomValues(2 * 3 * 16 * 16, seed: 11))
        let b = Tensor([3, 3, 16, 16], randomValues(3 * 3 * 16 * 16, seed: 12))
        let ta: [Float] = [1, 0, 0, 0, 0, 1], tb: [Float] = [0, 1, 0, 1, 0, 0, 0, 0, 1]
        func alone(_ x: Tensor, _ batch: Int, _ t: [Float], seed: UInt64) -> [[Float]] {
            m.params.zeroGrads()
            let ctx = m.forwardLogits(images: x.data, batch: batch, training: true, seed: seed)
            _ = m.classificationLoss(ctx, targets: t)
            m.backwardClassification(ctx)
            return gradients(m)
        }
        let expectedA = alone(a, 2, ta, seed: 21), expectedB = alone(b, 3, tb, seed: 22)
        for reversed in [false, true] {
            let ca = m.forwardLogits(images: a.data, batch: 2, training: true, seed: 21)
            let cb = m.forwardLogits(images: b.data, batch: 3, training: true, seed: 22)
            _ = m.classificationLoss(ca, targets: ta)
            _ = m.classificationLoss(cb, targets: tb)
            for (ctx, expected) in reversed ? [(cb, expectedB), (ca, expectedA)] : [(ca, expectedA), (cb, expectedB)] {
                m.params.zeroGrads()
                m.backwardClassification(ctx)
                XCTAssertEqual(gradients(m), expected, "reversed: \(reversed)")
            }
        }
    }

    /// The same for MAE pretraining: two masked forwards through encoder and decoder, backpropagated
    /// in reverse order.
    func testTwoPretrainingContextsInFlightBackpropagateInEitherOrder() throws {
        let m = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 8, embedDim: 16, depth: 2, numHeads: 2,
                                                        decoder: DecoderConfig(embedDim: 8, depth: 1, numHeads: 2)))
        m.initializeWeights(seed: 4)
        let x = [Tensor([2, 3, 16, 16], randomValues(2 * 3 * 16 * 16, seed: 13)),
                 Tensor([2, 3, 16, 16], randomValues(2 * 3 * 16 * 16, seed: 14))]
        let masks = [PatchMask(noise: randomValues(8, seed: 15), batch: 2, numPatches: 4, maskRatio: 0.5),
                     PatchMask(noise: randomValues(8, seed: 16), batch: 2, numPatches: 4, maskRatio: 0.5)]
        func forward(_ i: Int) -> DecoderContext {
            let ctx = m.forwardDecoder(m.forwardEncoder(images: x[i].data, batch: 2, mask: masks[i], training: true))
            _ = m.forwardLoss(ctx, images: x[i].data)
            return ctx
        }
        let expected = (0..<2).map { i -> [[Float]] in
            m.params.zeroGrads()
            m.backwardPretrain(forward(i))
            return gradients(m)
        }
        let contexts = [forward(0), forward(1)]
        for i in [1, 0] {
            m.params.zeroGrads()
            m.backwardPretrain(contexts[i])
            XCTAssertEqual(gradients(m), expected[i], "context \(i)")
        }
        XCTAssertNotEqual(expected[0], expected[1])
    }

    /// A context that ends hands its activation buffers to the next forward of the same shape (no
    /// fresh multi-MB allocation per step), unless the caller still holds one of its outputs.
    func testActivationBuffersAreReusedOnceAContextEnds() throws {
        let m = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 8, embedDim: 16, depth: 2, numHeads: 2,
                                                        numClasses: 3, pooling: .avg))
        m.initializeWeights(seed: 5)
        let x = Tensor([2, 3, 16, 16], randomValues(2 * 3 * 16 * 16, seed: 17)), t: [Float] = [1, 0, 0, 0, 1, 0]
        func step() -> StackBuffers {
            let ctx = m.forwardLogits(images: x.data, batch: 2, training: true)
            _ = m.classificationLoss(ctx, targets: t)
            m.backwardClassification(ctx)
            return ctx.encoder.stack.buffers
        }
        let first = step(), second = step()
        XCTAssertTrue(first === second, "the second step reuses the first one's buffers")
        var held: Tensor?
        let kept: StackBuffers = try {
            let ctx = m.forwardEncoder(images: x.data, batch: 2, training: true)
            held = ctx.output
            return try XCTUnwrap(ctx.stack.buffers)
        }()
        XCTAssertTrue(kept === first)
        XCTAssertFalse(step() === kept, "buffers whose output is still held are not handed on")
        XCTAssertEqual(held?.count, 2 * 5 * 16)
    }
}
