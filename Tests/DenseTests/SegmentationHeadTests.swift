import Foundation
import MAEFormats
import MAEKernels
@testable import MAEDense
import MAEModels
import TestSupport
import XCTest

/// The segmentation neck and heads against torch restatements of mmseg's modules
/// (scripts/make_segmentation_fixtures.py), loaded by mmseg's parameter names, and the whole
/// UperNet segmenter (ViT backbone included) against finite differences.
final class SegmentationHeadTests: XCTestCase {
    /// The fixture's tensors of one case ("upernet/...").
    struct Case {
        let file: SafeTensors
        let prefix: String

        init(_ prefix: String) throws {
            let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/segmentation_heads", withExtension: "safetensors"))
            file = try SafeTensors.read(contentsOf: url)
            self.prefix = prefix
        }

        func floats(_ key: String) throws -> [Float] {
            try XCTUnwrap(file.tensors[prefix + "/" + key], "fixture has no \(prefix)/\(key)").floats
        }

        func tensor(_ key: String) throws -> Tensor {
            let t = try XCTUnwrap(file.tensors[prefix + "/" + key], "fixture has no \(prefix)/\(key)")
            return Tensor(t.shape, t.floats)
        }

        func labels() throws -> [Int32] { try floats("labels").map { Int32($0) } }

        /// Sets every entry of `params` from the fixture by name; every name must be there.
        func load(into params: ParameterStore) throws {
            for spec in params.specs { try params.set(spec.name, shape: spec.shape, floats(spec.name)) }
        }
    }

    func testUperNetHeadsMatchTorch() throws {
        let fixture = try Case("upernet")
        let d = 6, channels = 5, aux = 4, classes = 3
        var layout = ParameterLayout()
        let neck = Feature2Pyramid(in: &layout, width: d)
        let decode = UPerHead(in: &layout, inChannels: d, channels: channels, classes: classes, dropout: 0)
        let auxiliary = FCNHead(in: &layout, inChannels: d, channels: aux, classes: classes, dropout: 0)
        let params = ParameterStore(layout: layout)
        try fixture.load(into: params)
        let inputs = try (0..<4).map { FeatureMap(try fixture.tensor("x\($0)"), stride: 4) }
        let labels = try fixture.labels()
        var rng = RandomStream(seed: 0)

        // Evaluation: BN on running statistics.
        let evalLevels = neck.forward(inputs, params, training: false).levels.map(\.tensor)
        XCTAssertEqual(evalLevels.map { $0.shape[2] }, [16, 8, 4, 2])
        assertClose(decode.forward(evalLevels, params, training: false, rng: &rng).logits.array,
                    try fixture.floats("eval/decode"), rtol: 1e-4, atol: 1e-5, "eval decode logits")
        assertClose(auxiliary.forward(evalLevels[2], params, training: false, rng: &rng).logits.array,
                    try fixture.floats("eval/aux"), rtol: 1e-4, atol: 1e-5, "eval aux logits")

        // Training: batch statistics, both losses at the 20x20 label size, every gradient.
        let pyramid = neck.forward(inputs, params, training: true)
        let levels = pyramid.levels.map(\.tensor)
        let head = decode.forward(levels, params, training: true, rng: &rng)
        let auxPass = auxiliary.forward(levels[2], params, training: true, rng: &rng)
        let (l1, d1) = lossAtLabelSize(head.logits, labels: labels, height: 20, width: 20, weight: 1)
        let (l2, d2) = lossAtLabelSize(auxPass.logits, labels: labels, height: 20, width: 20, weight: 0.4)
        XCTAssertEqual(l1 + l2, try fixture.floats("train/loss")[0], accuracy: 1e-5)
        let dLevels: [Tensor?] = decode.backward(head, dLogits: d1, params)
        addInPlace(dLevels[2]!, auxiliary.backward(auxPass, dLogits: d2, params))
        let dInputs = neck.backward(pyramid, levelGradients: dLevels, params)
        var compared = 0
        for spec in params.specs where spec.trainable {
            assertClose(Array(params.grad(spec.name)), try fixture.floats("grad/" + spec.name), rtol: 1e-3, atol: 1e-6,
                        "d " + spec.name)
            compared += 1
        }
        XCTAssertEqual(compared, params.specs.filter(\.trainable).count)
        XCTAssertGreaterThan(compared, 40)
        for i in 0..<4 { assertClose(dInputs[i].array, try fixture.floats("grad/x\(i)"), rtol: 1e-3, atol: 1e-6, "d x\(i)") }
        for spec in params.specs where spec.name.contains("running") {
            assertClose(Array(params.value(spec.name)), try fixture.floats("after/" + spec.name), rtol: 1e-4, atol: 1e-6,
                        spec.name + " after one step")
        }
    }

    /// mmseg's other pyramid, rescales (2, 1, 0.5, 0.25), against mmseg's own module.
    func testQuarterPyramidMatchesMMSeg() throws {
        let url = try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/feature2pyramid_quarter", withExtension: "safetensors"))
        let file = try SafeTensors.read(contentsOf: url)
        func tensor(_ key: String) throws -> Tensor {
            let t = try XCTUnwrap(file.tensors[key], key)
            return Tensor(t.shape, t.floats)
        }
        var layout = ParameterLayout()
        let neck = Feature2Pyramid(in: &layout, width: 6, rescales: [2, 1, 0.5, 0.25])
        let params = ParameterStore(layout: layout)
        XCTAssertEqual(params.specs.map(\.name), ["neck.upsample_2x.0.weight", "neck.upsample_2x.0.bias"])
        for spec in params.specs { try params.set(spec.name, shape: spec.shape, try tensor(spec.name).array) }
        let inputs = try (0..<4).map { FeatureMap(try tensor("x\($0)"), stride: 4) }
        let pass = neck.forward(inputs, params, training: true)
        XCTAssertEqual(pass.levels.map(\.stride), [2, 4, 8, 16])
        XCTAssertEqual(pass.levels.map { $0.tensor.shape[2] }, [16, 8, 4, 2])
        for k in 0..<4 { assertClose(pass.levels[k].tensor.array, try tensor("level\(k)").array, rtol: 1e-5, atol: 1e-6, "level \(k)") }
        params.zeroGrads()
        let dInputs = neck.backward(pass, levelGradients: try (0..<4).map { try tensor("w\($0)") }, params)
        for k in 0..<4 { assertClose(dInputs[k].array, try tensor("grad/x\(k)").array, rtol: 1e-5, atol: 1e-6, "d x\(k)") }
        for spec in params.specs {
            assertClose(Array(params.grad(spec.name)), try tensor("grad/" + spec.name).array, rtol: 1e-4, atol: 1e-5, "d " + spec.name)
        }
    }

    func testLinearHeadMatchesTorch() throws {
        let fixture = try Case("linear")
        var layout = ParameterLayout()
        let norm = BatchNorm2d("decode_head.bn", in: &layout, channels: 12)
        let conv = Conv2dLayer("decode_head.conv_seg", in: &layout, inChannels: 12, outChannels: 3, kernel: 1)
        let params = ParameterStore(layout: layout)
        try fixture.load(into: params)
        let x = try fixture.tensor("x"), labels = try fixture.labels()
        assertClose(conv(norm(x, params), params).array, try fixture.floats("eval/decode"), rtol: 1e-4, atol: 1e-5, "eval logits")
        let n = norm.forward(x, params, training: true)
        let c = conv.forward(n.output, params, training: true)
        let (loss, dLogits) = lossAtLabelSize(c.output, labels: labels, height: 16, width: 16, weight: 1)
        XCTAssertEqual(loss, try fixture.floats("train/loss")[0], accuracy: 1e-5)
        let dNormed = Tensor(n.output.shape), dx = Tensor(x.shape)
        conv.backward(c, dOut: dLogits, dInput: dNormed, params)
        norm.backward(n, dOut: dNormed, dInput: dx, params)
        for name in ["decode_head.bn.weight", "decode_head.bn.bias", "decode_head.conv_seg.weight", "decode_head.conv_seg.bias"] {
            assertClose(Array(params.grad(name)), try fixture.floats("grad/" + name), rtol: 1e-3, atol: 1e-6, "d " + name)
        }
        assertClose(dx.array, try fixture.floats("grad/x"), rtol: 1e-3, atol: 1e-6, "d x")
    }

    /// mmseg's CE: ignored pixels add 0 and still count in the mean.
    func testCrossEntropyMeansOverAllPixels() {
        let logits = Tensor([1, 2, 1, 2], [0, 0, 1, 0])   // pixel 0: (0, 1), pixel 1: (0, 0)
        let (loss, d) = pixelCrossEntropy(logits, labels: [1, 255])
        XCTAssertEqual(loss, Float(log(1 + exp(-1.0)) / 2), accuracy: 1e-6)
        XCTAssertEqual(d[1], 0)   // class 0, ignored pixel
        XCTAssertEqual(d[3], 0)
    }

    /// mmseg's layer ids and scales for a 12-block backbone, and weight decay on backbone.pos_embed.
    func testLayerDecayRule() {
        var layout = ParameterLayout()
        for name in ["backbone.cls_token", "backbone.pos_embed", "backbone.patch_embed.projection.weight",
                     "backbone.layers.0.attn.qkv.weight", "backbone.layers.11.ln1.bias", "decode_head.conv_seg.weight"] {
            layout.add(name, name.hasSuffix("bias") ? [4] : [1, 4, 4])
        }
        let g = mmsegLayerDecayGroups(layout, depth: 12, layerDecay: 0.65)
        let expected: [Float] = [13, 13, 13, 12, 1, 0].map { Float(pow(0.65, $0)) }
        for (a, e) in zip(g.lrScale, expected) { XCTAssertEqual(a, e, accuracy: 1e-7) }
        XCTAssertEqual(g.decay, [true, true, true, true, false, true])
        XCTAssertEqual(SegmentationBackbone.defaultOutIndices(depth: 12), [3, 5, 7, 11])
        XCTAssertEqual(SegmentationBackbone.defaultOutIndices(depth: 24), [7, 11, 15, 23])
        XCTAssertEqual(SegmentationBackbone.defaultOutIndices(depth: 6), [1, 2, 3, 5])
        XCTAssertEqual(SegmentationBackbone.mmsegName("blocks.3.mlp.fc1.weight"), "backbone.layers.3.ffn.layers.0.0.weight")
        XCTAssertEqual(SegmentationBackbone.mmsegName("blocks.0.norm2.bias"), "backbone.layers.0.ln2.bias")
        XCTAssertEqual(SegmentationBackbone.mmsegName("patch_embed.proj.weight"), "backbone.patch_embed.projection.weight")
    }

    /// The whole UperNet (a 4-block ViT, the neck, both heads, dropout included) against central
    /// differences of its training loss, on the heads' and the backbone's parameters.
    func testUperNetSegmenterGradients() throws {
        var config = ViTConfig(imgSize: 8, patchSize: 4, embedDim: 8, depth: 4, numHeads: 2)
        config.numClasses = 0
        let vit = try VisionTransformer(config: config)
        vit.initializeWeights(seed: 1)
        let model = UperNetSegmenter(backbone: SegmentationBackbone(vit: vit), classes: 3, channels: 4, auxChannels: 3)
        model.copyBackboneFromViT()
        model.initializeHeads(seed: 2)
        let images = randomValues(2 * 3 * 8 * 8, seed: 3)
        var rng = RandomStream(seed: 4)
        let labels = (0..<(2 * 64)).map { _ in rng.chance(0.2) ? Int32(255) : Int32(rng.below(3)) }
        func loss() -> Double {
            images.withUnsafeBufferPointer {
                model.trainStep(images: $0.baseAddress!, batch: 2, height: 8, width: 8, labels: labels, seed: 5)["loss"]!
            }
        }
        model.params.zeroGrads()
        _ = loss()
        let analytic = model.params.grads.array
        for name in ["backbone.layers.1.attn.qkv.weight", "backbone.patch_embed.projection.weight", "backbone.pos_embed",
                     "neck.upsample_4x.0.weight", "decode_head.psp_modules.3.1.conv.weight", "decode_head.fpn_bottleneck.bn.weight",
                     "decode_head.conv_seg.weight", "auxiliary_head.convs.0.conv.weight"] {
            let spec = try XCTUnwrap(model.params.spec(name), name)
            let values = model.params.value(name)
            let saved = Array(values)
            checkGradient(name, input: saved, analytic: Array(analytic[spec.offset..<(spec.offset + spec.count)]),
                          step: 1e-2, rtol: 5e-2, atol: 2e-3, samples: 12) { x in
                for i in x.indices { values[i] = x[i] }
                defer { for i in saved.indices { values[i] = saved[i] } }
                model.params.zeroGrads()
                return loss()
            }
        }
    }
}
