import Foundation
import MAEDense
import MAEKernels
import MAEModels
import TestSupport
import XCTest

final class ViTDetTests: XCTestCase {
    /// scripts/make_vitdet_fixtures.py's tiny ViTDet: blocks 0, 1 in 4 x 4 windows, block 2 global,
    /// rel-pos (the global tables sized for 28 px), pretraining grid 4, 8-channel pyramid.
    private func fixtureBackbone(width: Int = 16, outChannels: Int = 8) throws -> ViTDetBackbone {
        var config = ViTConfig(imgSize: 16, patchSize: 4, embedDim: width, depth: 3, numHeads: 2)
        config.vitdet = ViTDetOptions(windowSize: 4, globalBlocks: [2], inputSize: 28)
        return try ViTDetBackbone(config: config, outChannels: outChannels)
    }

    /// detectron2's ViT + SimpleFeaturePyramid restated in torch, on a 24 x 28 input (a 6 x 7 grid:
    /// windows padded to 8 x 8, pos_embed resized bicubically, the global rel-pos table resized
    /// linearly on the 6-row axis): every level, the image gradient and every parameter gradient,
    /// all parameters loaded by detectron2's names.
    func testBackboneAndPyramidMatchDetectron2() throws {
        let fx = try DenseFixture("vitdet")
        let backbone = try fixtureBackbone()
        for spec in backbone.params.specs {
            try backbone.params.set(spec.name, shape: spec.shape, fx.floats(spec.name))
        }
        XCTAssertEqual(backbone.pyramid.strides, [1, 2, 4, 8, 16])
        let images = try Tensor([2, 3, 24, 28], fx.floats("images"))
        let (levels, ctx) = backbone.forward(images: images.data, batch: 2, height: 24, width: 28, training: true)
        var grads: [Tensor] = []
        for (i, level) in levels.enumerated() {
            XCTAssertEqual(level.tensor.shape, try fx.shape("p\(i)"), "p\(i) shape")
            assertClose(level.tensor.array, try fx.floats("p\(i)"), rtol: 1e-4, atol: 1e-5, "p\(i)")
            grads.append(try Tensor(level.tensor.shape, fx.floats("grad_p\(i)")))
        }
        backbone.params.zeroGrads()
        let dImages = try XCTUnwrap(backbone.backward(ctx, levelGradients: grads, inputGradient: true))
        assertClose(dImages.array, try fx.floats("d_images"), rtol: 1e-3, atol: 1e-5, "d_images")
        var compared = 0
        for spec in backbone.params.specs {
            // Sums over every pixel (patch_embed, the pyramid's first layers) meet float32 rounding at ~1e-4.
            assertClose(Array(backbone.params.grad(spec.name)), try fx.floats("d_" + spec.name), rtol: 1e-3, atol: 1e-4,
                        "d_" + spec.name)
            compared += 1
        }
        XCTAssertEqual(compared, fx.keys.filter { $0.hasPrefix("d_backbone.") }.count, "every parameter of the ViT and the pyramid")
    }

    /// Finite differences of sum_l sum(p_l * g_l) through windows, rel-pos, the pos_embed resize and
    /// the pyramid, on a few parameters of each kind and the image. Twice the fixture's widths (a
    /// channel LN over 4 or 8 channels curves too sharply for float32 differences) and steps of 3e-2
    /// (the float32 loss of ~10^4 outputs is noisy at 1e-4).
    func testBackboneGradientsMatchFiniteDifferences() throws {
        let backbone = try fixtureBackbone(width: 32, outChannels: 16)
        backbone.initializeWeights(seed: 5)
        var rng = RandomStream(seed: 9)
        // Non-zero rel-pos tables and varied norms, so every term carries a gradient.
        for spec in backbone.params.specs where spec.name.contains("rel_pos") || spec.name.contains("norm") {
            let v = backbone.params.value(spec.name)
            for i in v.indices { v[i] += Float(rng.normal()) * 0.3 }
        }
        let h = 20, w = 12, input = randomValues(2 * 3 * h * w, seed: 3), images = Tensor([2, 3, h, w], input)
        let (levels, ctx) = backbone.forward(images: images.data, batch: 2, height: h, width: w, training: true)
        let shapes = levels.map(\.tensor.shape)
        let g = shapes.enumerated().map { randomValues($1.reduce(1, *), seed: UInt64(20 + $0)) }
        func loss(_ x: [Float]) -> Double {
            let perturbed = Tensor([2, 3, h, w], x)
            let levels = backbone.forward(images: perturbed.data, batch: 2, height: h, width: w).levels
            return zip(levels, g).reduce(0) { acc, pair in
                zip(pair.0.tensor.array, pair.1).reduce(acc) { $0 + Double($1.0) * Double($1.1) }
            }
        }
        backbone.params.zeroGrads()
        let dImages = try XCTUnwrap(backbone.backward(ctx, levelGradients: zip(shapes, g).map { Tensor($0, $1) },
                                                      inputGradient: true))
        checkGradient("images", input: input, analytic: dImages.array, step: 3e-2, samples: 12, loss: loss)
        for name in ["backbone.net.pos_embed", "backbone.net.blocks.0.attn.rel_pos_h", "backbone.net.blocks.1.attn.rel_pos_w",
                     "backbone.net.blocks.2.attn.rel_pos_h", "backbone.net.blocks.0.attn.qkv.weight",
                     "backbone.simfp_0.0.weight", "backbone.simfp_0.1.weight", "backbone.simfp_3.2.norm.bias"] {
            let values = backbone.params.value(name), original = Array(values)
            // The pyramid's weights see the raw ViT features (large): smaller steps there.
            let step: Float = name.contains("simfp") ? 1e-2 : 3e-2
            checkGradient(name, input: original, analytic: Array(backbone.params.grad(name)), step: step, samples: 8) { p in
                _ = values.update(fromContentsOf: p)
                defer { _ = values.update(fromContentsOf: original) }
                return loss(input)
            }
        }
    }

    /// ViTDet-B in detectron2's names and shapes: rel-pos tables 27 rows in window blocks and 127 in
    /// the global ones at 1024 px, no cls token or norm, simfp_2 .. simfp_5 and p2 .. p6.
    func testViTDetBaseLayoutHasDetectron2Names() throws {
        var config = ModelPreset.base.config
        config.vitdet = ViTDetOptions(for: config, inputSize: 1024)
        XCTAssertEqual(config.vitdet?.windowSize, 14)
        XCTAssertEqual(config.vitdet?.globalBlocks, [2, 5, 8, 11])
        var layout = ParameterLayout()
        let pyramid = try ViTDetBackbone.addParameters(config, to: &layout)
        let shapes = Dictionary(uniqueKeysWithValues: layout.shapes.map { ($0.name, $0.shape) })
        XCTAssertEqual(shapes["backbone.net.pos_embed"], [1, 197, 768])
        XCTAssertEqual(shapes["backbone.net.blocks.0.attn.rel_pos_h"], [27, 64])
        XCTAssertEqual(shapes["backbone.net.blocks.2.attn.rel_pos_w"], [127, 64])
        XCTAssertEqual(shapes["backbone.simfp_2.0.weight"], [768, 384, 2, 2])
        XCTAssertEqual(shapes["backbone.simfp_2.1.weight"], [384])
        XCTAssertEqual(shapes["backbone.simfp_2.3.weight"], [384, 192, 2, 2])
        XCTAssertEqual(shapes["backbone.simfp_2.4.weight"], [256, 192, 1, 1])
        XCTAssertEqual(shapes["backbone.simfp_2.5.norm.weight"], [256])
        XCTAssertEqual(shapes["backbone.simfp_3.2.weight"], [256, 256, 3, 3])
        XCTAssertEqual(shapes["backbone.simfp_4.0.weight"], [256, 768, 1, 1])
        XCTAssertEqual(shapes["backbone.simfp_5.1.weight"], [256, 768, 1, 1])
        XCTAssertNil(shapes["backbone.simfp_2.4.bias"], "the pyramid's convolutions have no bias under LN")
        XCTAssertFalse(layout.specs.contains { $0.name.hasSuffix("cls_token") || $0.name.contains("net.norm") })
        XCTAssertEqual(pyramid.strides, [4, 8, 16, 32, 64])
        XCTAssertEqual(pyramid.levelNames, ["p2", "p3", "p4", "p5", "p6"])
    }

    /// `--eval-only` reads the architecture from a state dict: ViTDet-B's tables (27 rows in window
    /// blocks, 127 in 2, 5, 8, 11) give window 14, those global blocks and a 1024 px input.
    func testOptionsAreInferredFromRelPosTableLengths() {
        var config = ModelPreset.base.config
        config.vitdet = ViTDetOptions(for: config, inputSize: 1024)
        let layout = config.parameterLayout()
        let lengths = (0..<12).map { i in layout.specs.first { $0.name == "blocks.\(i).attn.rel_pos_h" }?.shape[0] }
        XCTAssertEqual(ViTDetOptions.inferred(relPosLengths: lengths, patchSize: 16), config.vitdet)
        XCTAssertNil(ViTDetOptions.inferred(relPosLengths: [27, nil, 127], patchSize: 16))
    }

    func testGlobalBlocksAreEvenlySpacedAsDetectron2() {
        XCTAssertEqual(ViTDetOptions.evenlySpacedGlobalBlocks(depth: 12), [2, 5, 8, 11])
        XCTAssertEqual(ViTDetOptions.evenlySpacedGlobalBlocks(depth: 24), [5, 11, 17, 23])
        XCTAssertEqual(ViTDetOptions.evenlySpacedGlobalBlocks(depth: 32), [7, 15, 23, 31])
        XCTAssertEqual(ViTDetOptions.evenlySpacedGlobalBlocks(depth: 6), [1, 3, 5])
    }

    /// The shipped MAE checkpoint in a ViTDet backbone at the scenes' 64 px: its blocks copied by name,
    /// rel-pos tables zero, cls token and norm left out; strides 1 .. 16 for patch 4.
    func testShippedMAEEncoderLoadsIntoTheBackbone() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let mae = try loadVisionTransformer(from: root.appendingPathComponent("Checkpoints/mae_shapes.safetensors")).model
        var config = mae.config
        config.numClasses = 0
        config.vitdet = ViTDetOptions(for: config, inputSize: 64)
        XCTAssertEqual(config.vitdet?.globalBlocks, [1, 3, 5])
        let backbone = try ViTDetBackbone(config: config, outChannels: 32)
        backbone.initializeWeights(seed: 1)
        try backbone.loadEncoder(from: mae)
        XCTAssertEqual(Array(backbone.params.value("backbone.net.blocks.4.mlp.fc2.weight")),
                       Array(mae.params.value("blocks.4.mlp.fc2.weight")))
        XCTAssertEqual(Array(backbone.params.value("backbone.net.pos_embed")), Array(mae.params.value("pos_embed")))
        XCTAssertTrue(backbone.params.value("backbone.net.blocks.3.attn.rel_pos_h").allSatisfy { $0 == 0 })
        let images = Tensor([1, 3, 64, 64], randomValues(3 * 64 * 64, seed: 2))
        let levels = backbone.forward(images: images.data, batch: 1, height: 64, width: 64).levels
        XCTAssertEqual(levels.map(\.stride), [1, 2, 4, 8, 16])
        XCTAssertEqual(levels.map(\.height), [64, 32, 16, 8, 4])
        XCTAssertTrue(levels.allSatisfy { $0.tensor.buffer.allSatisfy(\.isFinite) })
    }
}
