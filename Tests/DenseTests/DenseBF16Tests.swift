import Foundation
import MAEDense
import MAEKernels
import MAEModels
import TestSupport
import XCTest

/// `--precision bf16` on the dense models: the ViT backbone's linear layers in bf16 (its packed weights,
/// `BF16WeightCache`), necks and heads in fp32. Outputs at the bf16 rounding level of fp32's and not
/// equal to them; evaluation packs once; an optimizer step reaches the next forward, in both precisions.
///
/// The bound: bf16 keeps 8 significant bits (unit roundoff 2^-9), so each product of two rounded
/// operands is within about 2^-8 of fp32's relative to the operands' magnitude; these 3-4 block
/// backbones chain about 4 products per block plus the patch embedding, and the errors of a chain add
/// to about 17 x 2^-8 ≈ 6% in the worst case and partly cancel in practice. The test allows 3% of the
/// output's max |value| (the classifier's bound in BF16ModelTests, the same arithmetic) and requires
/// more than 1e-5 on outputs and gradients, which the fp32 path would never show. Losses get the upper
/// bound only: freshly initialised heads (std 0.01) give near-uniform logits, whose cross-entropy is
/// log K to within ~1e-6 whatever the features, so their bf16 and fp32 values may even be equal.
final class DenseBF16Tests: XCTestCase {
    private let side = 16, batch = 2

    /// max |a - b| / max |b|.
    private func errorRelativeToMax(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max()! / b.map(abs).max()!
    }

    private func assertBF16Level(_ bf16: [Float], _ fp32: [Float], _ what: String, differs: Bool = true,
                                 file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(bf16.count, fp32.count, what, file: file, line: line)
        let err = errorRelativeToMax(bf16, fp32)
        XCTAssertLessThan(err, 3e-2, "\(what): bf16 vs fp32, error relative to max |value|", file: file, line: line)
        if differs { XCTAssertGreaterThan(err, 1e-5, "\(what): the backbone's products ran in bf16", file: file, line: line) }
    }

    // MARK: - Segmentation

    private var images: [Float] { randomValues(batch * 3 * side * side, seed: 21) }
    private var labels: [Int32] {
        var rng = RandomStream(seed: 22)
        return (0..<(batch * side * side)).map { _ in rng.chance(0.1) ? 255 : Int32(rng.below(3)) }
    }

    /// A 4-block ViT under UperNet (both heads), or the linear head on its last 2 blocks.
    private func segmenter(linear: Bool = false, seed: UInt64 = 1) throws -> Segmenter {
        var config = ViTConfig(imgSize: side, patchSize: 4, embedDim: 16, depth: 4, numHeads: 2)
        config.numClasses = 0
        let vit = try VisionTransformer(config: config)
        vit.initializeWeights(seed: seed)
        let model: Segmenter = linear
            ? try LinearSegmenter(backbone: SegmentationBackbone(vit: vit, outIndices: [2, 3]), classes: 3)
            : UperNetSegmenter(backbone: SegmentationBackbone(vit: vit), classes: 3, channels: 8, auxChannels: 4)
        model.initializeHeads(seed: seed + 1)
        return model
    }

    private func logits(_ model: Segmenter) -> [Float] {
        images.withUnsafeBufferPointer { model.logits(images: $0.baseAddress!, batch: batch, height: side, width: side).array }
    }

    private func trainStep(_ model: Segmenter) -> [String: Double] {
        model.params.zeroGrads()
        return images.withUnsafeBufferPointer {
            model.trainStep(images: $0.baseAddress!, batch: batch, height: side, width: side, labels: labels, seed: 5)
        }
    }

    func testSegmenterLogitsAndLossesInBF16AreAtTheRoundingLevel() throws {
        for linear in [false, true] {
            // Two identical segmenters: a training step moves BatchNorm's running statistics.
            let model = try segmenter(linear: linear), twin = try segmenter(linear: linear)
            twin.backbone.vit.precision = .bf16
            let fp32 = (logits: logits(model), loss: trainStep(model), grads: model.params.grads.array)
            let bf16 = (logits: logits(twin), loss: trainStep(twin), grads: twin.params.grads.array)
            let name = linear ? "linear" : "upernet"
            assertBF16Level(bf16.logits, fp32.logits, "\(name) logits")
            for (term, value) in fp32.loss {
                assertBF16Level([Float(bf16.loss[term]!)], [Float(value)], "\(name) \(term) loss", differs: false)
            }
            assertBF16Level(bf16.grads, fp32.grads, "\(name) gradients")
        }
    }

    func testEvaluatingTwiceInBF16PacksTheBackboneOnce() throws {
        for linear in [false, true] {
            let model = try segmenter(linear: linear)
            model.backbone.vit.precision = .bf16
            let cache = model.backbone.vit.params.bf16Weights
            let first = logits(model)
            let packs = cache.packCount
            XCTAssertGreaterThan(packs, 0, "the first evaluation packs the backbone's weights")
            XCTAssertEqual(logits(model), first)
            XCTAssertEqual(cache.packCount, packs, "\(linear ? "linear" : "upernet"): a second evaluation repacks nothing")
        }
    }

    /// After an optimizer step the next forward runs the stepped weights: the same logits as a fresh
    /// segmenter given the stepped store's values, in fp32 and in bf16; in bf16 the backbone is packed
    /// again once.
    func testAnOptimizerStepReachesTheNextForward() throws {
        for precision in Precision.allCases {
            let model = try segmenter()
            model.backbone.vit.precision = precision
            let before = logits(model)
            _ = trainStep(model)
            let optimizer = AdamW(count: model.params.layout.totalCount, groups: model.groups(layerDecay: 0.9))
            optimizer.step(model.params, lr: 1e-2)
            let packs = model.backbone.vit.params.bf16Weights.packCount
            let after = logits(model)
            XCTAssertNotEqual(after, before, "\(precision): the step changed the logits")
            let fresh = try segmenter(seed: 7)
            fresh.backbone.vit.precision = precision
            fresh.params.values.buffer.update(from: model.params.values.buffer)
            fresh.params.weightsChanged()
            XCTAssertEqual(after, logits(fresh), "\(precision): the stepped segmenter runs its new weights")
            let repacked = model.backbone.vit.params.bf16Weights.packCount - packs
            if precision == .bf16 {
                XCTAssertGreaterThan(repacked, 0, "the step's weights are packed")
                let again = model.backbone.vit.params.bf16Weights.packCount
                _ = logits(model)
                XCTAssertEqual(model.backbone.vit.params.bf16Weights.packCount, again, "and only once")
            } else {
                XCTAssertEqual(repacked, 0, "fp32 packs nothing")
            }
        }
    }

    /// A writer of the segmenter's values that does not call `weightsChanged()` is still seen: the
    /// backbone's values are compared, not a version trusted.
    func testAnUnannouncedWriteReachesTheNextForward() throws {
        let model = try segmenter()
        model.backbone.vit.precision = .bf16
        let before = logits(model)
        let spec = try XCTUnwrap(model.params.spec("backbone.layers.3.ffn.layers.1.weight"))
        (model.params.values.data + spec.offset).update(repeating: 0, count: spec.count)
        XCTAssertNotEqual(logits(model), before)
        let copied = UnsafeBufferPointer(start: model.backbone.vit.params.read("blocks.3.mlp.fc2.weight"), count: spec.count)
        XCTAssertEqual(Array(copied), [Float](repeating: 0, count: spec.count))
    }

    // MARK: - Detection

    private let detectSide = 32

    /// A 3-block ViTDet (4 x 4 windows, block 2 global) with an 8-channel pyramid and small heads.
    private func detector(seed: UInt64 = 1) throws -> MaskRCNN {
        var vit = ViTConfig(imgSize: 16, patchSize: 4, embedDim: 16, depth: 3, numHeads: 2)
        vit.vitdet = ViTDetOptions(windowSize: 4, globalBlocks: [2], inputSize: detectSide)
        let heads = ROIHeadConfig(classes: 2, inChannels: 8, boxPooled: 3, maskPooled: 4, boxConvs: 1, convDim: 4, fcDim: 8,
                                  maskConvs: 1)
        let model = try MaskRCNN(MaskRCNNConfig(backbone: vit, pyramidChannels: 8, anchorSizes: [4, 8, 16, 32, 64], heads: heads,
                                                rpnBatchSize: 32, roiBatchSize: 8, dropPath: 0))
        model.initializeWeights(seed: seed)
        return model
    }

    private var detectImages: [Float] { randomValues(batch * 3 * detectSide * detectSide, seed: 23) }
    private var truth: [GroundTruth] {
        (0..<batch).map { i in
            var mask = [UInt8](repeating: 0, count: detectSide * detectSide)
            for y in 4..<20 { for x in (4 + 4 * i)..<(24 + 2 * i) { mask[y * detectSide + x] = 1 } }
            return GroundTruth(boxes: [Box(xyxy: [Float(4 + 4 * i), 4, Float(24 + 2 * i), 20])], classes: [i % 2], masks: [mask],
                               maskHeight: detectSide, maskWidth: detectSide)
        }
    }

    /// Every pyramid level, concatenated.
    private func levels(_ model: MaskRCNN) -> [Float] {
        detectImages.withUnsafeBufferPointer {
            model.backbone.forward(images: $0.baseAddress!, batch: batch, height: detectSide, width: detectSide).levels
                .flatMap(\.tensor.array)
        }
    }

    private func detect(_ model: MaskRCNN) throws -> [Float] {
        let sizes = [ImageSize](repeating: (detectSide, detectSide), count: batch)
        return try detectImages.withUnsafeBufferPointer {
            try model.detect(images: $0.baseAddress!, batch: batch, imageSizes: sizes)
        }.flatMap { d in d.scores + d.boxes.flatMap { [$0.x0, $0.y0, $0.x1, $0.y1] } }
    }

    private func trainStep(_ model: MaskRCNN) throws -> [String: Float] {
        model.params.zeroGrads()
        let sizes = [ImageSize](repeating: (detectSide, detectSide), count: batch)
        return try detectImages.withUnsafeBufferPointer {
            try model.trainStep(images: $0.baseAddress!, batch: batch, imageSizes: sizes, truth: truth, stream: RandomStream(seed: 9))
        }
    }

    /// The pyramid's levels and the RPN's losses (its anchor samples depend on geometry alone) at the
    /// rounding level; the RoI heads' losses are left out: their proposals are a top-k of scores,
    /// which a rounding can reorder.
    func testDetectorLevelsAndRPNLossesInBF16AreAtTheRoundingLevel() throws {
        let model = try detector(), twin = try detector()
        twin.backbone.vit.precision = .bf16
        let fp32 = (levels: levels(model), loss: try trainStep(model))
        let bf16 = (levels: levels(twin), loss: try trainStep(twin))
        assertBF16Level(bf16.levels, fp32.levels, "pyramid levels")
        for term in ["loss_rpn_cls", "loss_rpn_loc"] {
            assertBF16Level([try XCTUnwrap(bf16.loss[term])], [try XCTUnwrap(fp32.loss[term])], term, differs: false)
        }
    }

    func testDetectingTwiceInBF16PacksTheBackboneOnce() throws {
        let model = try detector()
        model.backbone.vit.precision = .bf16
        let first = try detect(model)
        let packs = model.params.bf16Weights.packCount
        XCTAssertGreaterThan(packs, 0)
        XCTAssertEqual(try detect(model), first)
        XCTAssertEqual(model.params.bf16Weights.packCount, packs, "a second evaluation repacks nothing")
    }

    /// The detector's ViT shares the store the optimizer steps: the next forward runs the new weights
    /// (the same levels as a fresh detector given them), packed again in bf16.
    func testAnOptimizerStepReachesTheDetectorsNextForward() throws {
        for precision in Precision.allCases {
            let model = try detector()
            model.backbone.vit.precision = precision
            let before = levels(model)
            _ = try trainStep(model)
            let optimizer = AdamW(count: model.params.layout.totalCount, groups: model.parameterGroups(layerDecay: 0.9))
            optimizer.step(model.params, lr: 1e-2)
            let packs = model.params.bf16Weights.packCount
            let after = levels(model)
            XCTAssertNotEqual(after, before, "\(precision): the step changed the levels")
            let fresh = try detector(seed: 7)
            fresh.backbone.vit.precision = precision
            fresh.params.values.buffer.update(from: model.params.values.buffer)
            fresh.params.weightsChanged()
            XCTAssertEqual(after, levels(fresh), "\(precision): the stepped detector runs its new weights")
            if precision == .bf16 { XCTAssertGreaterThan(model.params.bf16Weights.packCount, packs, "the step's weights are packed") }
        }
    }
}
