import XCTest
import MAEFormats
import MAEKernels
@testable import MAEModels
import TestSupport

/// Element-wise parity with PyTorch on the shared reference fixtures (see Fixtures/README.md):
/// forward tensors within rtol 1e-4, gradients within rtol 1e-3.
final class ParityTests: XCTestCase {
    /// Loads a fixture's weights into a fresh model; every model parameter must be in the file.
    func loadModel(_ file: SafeTensors, config: ViTConfig) throws -> VisionTransformer {
        let model = try VisionTransformer(config: config)
        for spec in model.params.specs {
            let t = try XCTUnwrap(file.tensors[spec.name], "fixture lacks \(spec.name)")
            try model.params.set(spec.name, shape: t.shape, t.floats)
        }
        return model
    }

    func testMAEPretrainingMatchesPyTorch() throws {
        let f = try SafeTensors.read(contentsOf: fixtureURL("mae_tiny.safetensors"))
        let config = ViTConfig(imgSize: 32, patchSize: 8, embedDim: 64, depth: 2, numHeads: 4,
                               decoder: DecoderConfig(embedDim: 32, depth: 1, numHeads: 4), normPixLoss: true)
        let model = try loadModel(f, config: config)
        let images = Tensor([2, 3, 32, 32], f.tensors["input.images"]!.floats)
        let mask = PatchMask(noise: f.tensors["input.noise"]!.floats, batch: 2, numPatches: 16, maskRatio: 0.75)

        assertClose(mask.mask, f.tensors["expect.mask"]!.floats, rtol: 0, atol: 0, "mask")
        XCTAssertEqual(mask.idsRestore, f.tensors["expect.ids_restore"]!.int64s.map(Int.init), "ids_restore")
        assertClose(model.patchEmbedding(images: images.data, batch: 2).array,
                    f.tensors["expect.patch_embed"]!.floats, "patch_embed")

        model.params.zeroGrads()
        let encoded = model.forwardEncoder(images: images.data, batch: 2, mask: mask, blocks: [0], training: true)
        assertClose(encoded.blockOutput(0).array, f.tensors["expect.block0"]!.floats, "block0")
        assertClose(encoded.output.array, f.tensors["expect.latent"]!.floats,
                    "latent")
        let decoded = model.forwardDecoder(encoded)
        assertClose(decoded.pred.array, f.tensors["expect.pred"]!.floats, "pred")
        let loss = model.forwardLoss(decoded, images: images.data)
        assertClose([loss], f.tensors["expect.loss"]!.floats, "loss")

        model.backwardPretrain(decoded)
        var checked = 0
        for spec in model.params.specs where spec.trainable {
            let expected = try XCTUnwrap(f.tensors["grad." + spec.name], "fixture lacks grad.\(spec.name)")
            assertClose(Array(model.params.grad(spec.name)), expected.floats, rtol: 1e-3, atol: 1e-6, "grad.\(spec.name)")
            checked += 1
        }
        XCTAssertEqual(checked, f.tensors.keys.filter { $0.hasPrefix("grad.") }.count, "every gradient compared")
        // Fixed sin-cos tables get no gradient.
        XCTAssertFalse(model.params.spec("pos_embed")!.trainable)
        XCTAssertFalse(model.params.spec("decoder_pos_embed")!.trainable)
    }

    func testUnmaskedFeaturesMatchPyTorch() throws {
        let f = try SafeTensors.read(contentsOf: fixtureURL("mae_tiny.safetensors"))
        let config = ViTConfig(imgSize: 32, patchSize: 8, embedDim: 64, depth: 2, numHeads: 4,
                               decoder: DecoderConfig(embedDim: 32, depth: 1, numHeads: 4))
        let model = try loadModel(f, config: config)
        let images = Tensor([2, 3, 32, 32], f.tensors["input.images"]!.floats)
        let out = model.forwardEncoder(images: images.data, batch: 2).output
        XCTAssertEqual(out.shape, [2, 17, 64])
        assertClose(out.array,
                    f.tensors["expect.features_all"]!.floats, "features_all")
    }

    func testFineTuningClassifierMatchesPyTorch() throws {
        let f = try SafeTensors.read(contentsOf: fixtureURL("vit_tiny_cls.safetensors"))
        let config = ViTConfig(imgSize: 32, patchSize: 8, embedDim: 64, depth: 2, numHeads: 4,
                               numClasses: 5, pooling: .avg)
        let model = try loadModel(f, config: config)
        let images = Tensor([3, 3, 32, 32], f.tensors["input.images"]!.floats)
        let labels = f.tensors["input.labels"]!.int64s.map(Int.init)
        model.params.zeroGrads()
        let pass = model.forwardLogits(images: images.data, batch: 3, training: true)
        assertClose(pass.logits!.array, f.tensors["expect.logits"]!.floats, "logits")
        let loss = model.classificationLoss(pass, targets: smoothedTargets(labels: labels, classes: 5, smoothing: 0.1))
        assertClose([loss], f.tensors["expect.loss"]!.floats, "loss")
        model.backwardClassification(pass)
        var checked = 0
        for spec in model.params.specs {
            let expected = try XCTUnwrap(f.tensors["grad." + spec.name], "fixture lacks grad.\(spec.name)")
            assertClose(Array(model.params.grad(spec.name)), expected.floats, rtol: 1e-3, atol: 1e-6, "grad.\(spec.name)")
            checked += 1
        }
        XCTAssertEqual(checked, f.tensors.keys.filter { $0.hasPrefix("grad.") }.count, "every gradient compared")
    }

    /// Partial fine-tuning stops the backward at the lowest trained block: the trained tensors get
    /// PyTorch's gradients, the frozen ones none.
    func testBackwardStopsAtTheLowestTrainedBlock() throws {
        let f = try SafeTensors.read(contentsOf: fixtureURL("vit_tiny_cls.safetensors"))
        let config = ViTConfig(imgSize: 32, patchSize: 8, embedDim: 64, depth: 2, numHeads: 4,
                               numClasses: 5, pooling: .avg)
        let model = try loadModel(f, config: config)
        model.lowestTrainedBlock = 1
        let images = Tensor([3, 3, 32, 32], f.tensors["input.images"]!.floats)
        model.params.zeroGrads()
        let pass = model.forwardLogits(images: images.data, batch: 3, training: true)
        _ = model.classificationLoss(pass, targets: smoothedTargets(labels: f.tensors["input.labels"]!.int64s.map(Int.init),
                                                              classes: 5, smoothing: 0.1))
        model.backwardClassification(pass)
        for spec in model.params.specs {
            let grad = Array(model.params.grad(spec.name))
            if spec.name.hasPrefix("blocks.1.") || spec.name.hasPrefix("fc_norm") || spec.name.hasPrefix("head") {
                assertClose(grad, f.tensors["grad." + spec.name]!.floats, rtol: 1e-3, atol: 1e-6, "grad.\(spec.name)")
            } else {
                XCTAssertTrue(grad.allSatisfy { $0 == 0 }, "\(spec.name) is frozen: no gradient")
            }
        }
    }
}
