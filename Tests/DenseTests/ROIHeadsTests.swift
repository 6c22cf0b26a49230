import MAEDense
import MAEKernels
import MAEFormats
import MAEModels
import TestSupport
import XCTest

final class ROIHeadsTests: XCTestCase {
    /// Heads over one pyramid level of stride 4, with the fixture's small widths.
    private func makeHeads(_ config: ROIHeadConfig = BoxMaskHeadTests.config) -> (ROIHeads, ParameterStore) {
        var layout = ParameterLayout()
        let heads = ROIHeads(config, strides: [4], in: &layout)
        return (heads, ParameterStore(layout: layout))
    }

    /// fast_rcnn_inference + mask_rcnn_inference against the torch restatement: boxes, scores and
    /// classes after the threshold, class-wise NMS and top-k, and the kept boxes' mask probabilities.
    func testInferenceMatchesTorch() throws {
        let fx = try DenseFixture("roi_heads")
        let (heads, store) = makeHeads()
        for spec in store.specs {
            let key = spec.name.hasPrefix("roi_heads.mask_head") ? "mask/\(spec.name)" : "box/\(spec.name)"
            try store.set(spec.name, shape: spec.shape, fx.floats(key))
        }
        try checkInference(heads, store, fx)
    }

    /// The same heads loaded from a detectron2 model-zoo style .pkl and a torch.save state dict give
    /// detectron2's detections.
    func testDetectronCheckpointsGiveTheSameDetections() throws {
        let fx = try DenseFixture("roi_heads")
        for name in ["roi_heads_d2.pkl", "roi_heads_d2.pth"] {
            let file = try CheckpointFile.open(try XCTUnwrap(Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)))
            XCTAssertEqual(try ROIHeadConfig.inferred(from: file.tensors.mapValues(\.shape), source: name), BoxMaskHeadTests.config)
            let (heads, store) = makeHeads()
            try DetectronCheckpoint.load(file, into: store)
            try checkInference(heads, store, fx)
        }
    }

    private func checkInference(_ heads: ROIHeads, _ store: ParameterStore, _ fx: DenseFixture,
                                file: StaticString = #filePath, line: UInt = #line) throws {
        let features = FeatureMap(try Tensor(fx.shape("infer/features"), fx.floats("infer/features")), stride: 4)
        let proposals = try (0..<2).map { b in
            try fx.floats("infer/proposals\(b)").chunked(4).map { Box(xyxy: $0) }
        }
        let results = heads.inference(features: [features], proposals: proposals, imageSizes: [(48, 40), (44, 48)], store)
        for b in 0..<2 {
            let r = results[b]
            let scores = try fx.floats("infer/scores\(b)")
            XCTAssertEqual(r.count, scores.count, "image \(b): detections kept", file: file, line: line)
            guard r.count == scores.count else { continue }
            assertClose(r.scores, scores, rtol: 1e-4, atol: 1e-6, "image \(b) scores")
            XCTAssertEqual(r.classes, try fx.floats("infer/classes\(b)").map { Int($0) }, "image \(b) classes")
            assertClose(r.boxes.flatMap(\.values), try fx.floats("infer/boxes\(b)"), rtol: 1e-4, atol: 1e-4, "image \(b) boxes")
            assertClose(r.maskProbabilities.array, try fx.floats("infer/masks\(b)"), rtol: 1e-4, atol: 1e-5, "image \(b) masks")
        }
    }

    /// Matching at IoU 0.5 without low-quality matches, ground truth appended, 0.25 of the sample foreground.
    func testSamplingAppendsGroundTruthAndLabelsByIoU() {
        var (heads, _) = makeHeads()
        heads.batchSizePerImage = 8
        let truth = GroundTruth(boxes: [Box(0, 0, 10, 10), Box(20, 20, 30, 30)], classes: [2, 0],
                                masks: [[], []], maskHeight: 0, maskWidth: 0)
        // IoU with gt 0: 1, 0.81, 0.25 (below 0.5: background); one box overlapping nothing.
        let proposals = [Box(0, 0, 10, 10), Box(0, 0, 9, 9), Box(0, 0, 5, 5), Box(40, 40, 44, 44)]
        var stream = RandomStream(seed: 1)
        let s = heads.sample(proposals: proposals, truth: truth, stream: &stream)
        // 6 candidates (4 + 2 gt): foreground are proposals 0, 1 and both gt; at most 8 * 0.25 = 2 kept.
        XCTAssertEqual(s.boxes.count, 4, "2 foreground + the 2 background there are")
        XCTAssertEqual(s.classes.filter { $0 < 3 }.count, 2)
        XCTAssertEqual(s.classes.filter { $0 == 3 }.count, 2)
        for i in s.boxes.indices where s.classes[i] < 3 {
            XCTAssertEqual(s.classes[i], truth.classes[s.matched[i]])
            XCTAssertGreaterThanOrEqual(intersectionOverUnion(s.boxes[i], truth.boxes[s.matched[i]]), 0.5)
        }
        let background = zip(s.boxes, s.classes).filter { $0.1 == 3 }.map(\.0)
        XCTAssertEqual(Set(background.map(\.values)), Set([Box(0, 0, 5, 5).values, Box(40, 40, 44, 44).values]))
        // No ground truth: everything is background.
        let none = heads.sample(proposals: proposals, truth: GroundTruth(boxes: [], classes: [], masks: [], maskHeight: 0, maskWidth: 0),
                                stream: &stream)
        XCTAssertEqual(none.classes, [3, 3, 3, 3])
    }

    /// The training losses' gradient in the pyramid level (through RoIAlign, both heads and their
    /// losses) and in the box predictor against central differences, with a fixed sample.
    func testTrainingLossGradientsMatchFiniteDifferences() throws {
        let config = ROIHeadConfig(classes: 2, inChannels: 3, boxPooled: 3, maskPooled: 3, boxConvs: 1, convDim: 4, fcDim: 8,
                                   maskConvs: 1)
        var (heads, store) = makeHeads(config)
        heads.batchSizePerImage = 6
        var rng = RandomStream(seed: 2)
        heads.initialize(store, rng: &rng)
        for spec in store.specs where spec.name.contains("predictor") {
            let values = randomValues(spec.count, seed: UInt64(spec.offset), scale: 0.3)
            for i in 0..<spec.count { store.value(spec.name)[i] = values[i] }
        }
        let side = 16
        var mask = [UInt8](repeating: 0, count: side * side)
        for y in 3..<11 { for x in 2..<9 { mask[y * side + x] = 1 } }
        var mask2 = [UInt8](repeating: 0, count: side * side)
        for y in 9..<15 { for x in 8..<15 { mask2[y * side + x] = 1 } }
        let truth = GroundTruth(boxes: [Box(2, 3, 9, 11), Box(8, 9, 15, 15)], classes: [1, 0], masks: [mask, mask2],
                                maskHeight: side, maskWidth: side)
        let proposals = [Box(1.5, 2.5, 9.5, 10), Box(7, 8.5, 14, 15.5), Box(0, 0, 6, 6), Box(9, 1, 15, 7.5)]
        let x0 = randomValues(3 * 4 * 4, seed: 3)
        func run(_ x: [Float]) -> (Double, ROIHeads.TrainingContext) {
            var stream = RandomStream(seed: 7)
            let features = FeatureMap(Tensor([1, 3, 4, 4], x), stride: 4)
            let (losses, context) = heads.forwardTraining(features: [features], proposals: [proposals], truth: [truth], store,
                                                          stream: &stream)
            XCTAssertGreaterThan(losses.mask, 0)
            XCTAssertGreaterThan(losses.boxRegression, 0)
            return (Double(losses.classification) + Double(losses.boxRegression) + Double(losses.mask), context)
        }
        let (_, context) = run(x0)
        store.zeroGrads()
        let dFeatures = FeatureMap(batch: 1, channels: 3, height: 4, width: 4, stride: 4)
        heads.backward(context, dFeatures: [dFeatures], store)
        checkGradient("d p2", input: x0, analytic: dFeatures.tensor.array, step: 1e-2) { run($0).0 }
        let name = "roi_heads.box_predictor.cls_score.weight"
        let w0 = Array(store.value(name)), analytic = Array(store.grad(name))
        checkGradient("d \(name)", input: w0, analytic: analytic, step: 1e-2) { w in
            for (i, v) in w.enumerated() { store.value(name)[i] = v }
            defer { for (i, v) in w0.enumerated() { store.value(name)[i] = v } }
            return run(x0).0
        }
    }

    /// detector_postprocess: boxes scaled to the original size and clipped, empty ones dropped, masks pasted.
    func testPostprocessRescalesClipsAndPastes() {
        let probs = Tensor([2, 4, 4], [Float](repeating: 0.9, count: 32))
        let d = Detections(boxes: [Box(2, 2, 6, 4), Box(10, 0, 10, 3)], scores: [0.9, 0.8], classes: [1, 0], maskProbabilities: probs)
        let out = ROIHeads.postprocess(d, inputHeight: 8, inputWidth: 10, originalHeight: 16, originalWidth: 5)
        XCTAssertEqual(out.boxes, [Box(1, 4, 3, 8)], "x scaled by 0.5, y by 2; the zero-width box dropped")
        XCTAssertEqual(out.scores, [0.9])
        XCTAssertEqual(out.classes, [1])
        XCTAssertEqual(out.masks.count, 1)
        XCTAssertEqual(out.masks[0].count, 16 * 5)
        XCTAssertEqual(out.masks[0][5 * 5 + 1], 1)
        XCTAssertEqual(out.masks[0][0], 0)
    }
}

private extension Array {
    func chunked(_ n: Int) -> [[Element]] {
        stride(from: 0, to: count, by: n).map { Array(self[$0..<Swift.min($0 + n, count)]) }
    }
}
