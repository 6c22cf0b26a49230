import MAEDense
import MAEKernels
import MAEModels
import MAEFormats
import TestSupport
import XCTest

/// The box and mask heads against a torch restatement of detectron2 (scripts/make_roi_head_fixtures.py)
/// and against finite differences of their losses.
final class BoxMaskHeadTests: XCTestCase {
    /// The fixture's small heads: 6 input channels, convs of 8, FC 16, 3 classes.
    static let config = ROIHeadConfig(classes: 3, inChannels: 6, convDim: 8, fcDim: 16)

    private func loaded(_ fx: DenseFixture, _ prefix: String, _ store: ParameterStore) throws {
        for spec in store.specs { try store.set(spec.name, shape: spec.shape, fx.floats("\(prefix)/\(spec.name)")) }
    }

    func testParameterNamesAreDetectron2s() {
        var layout = ParameterLayout()
        _ = BoxHead(.vitDet(classes: 80), in: &layout)
        _ = MaskHead(.vitDet(classes: 80), in: &layout)
        let shapes = Dictionary(uniqueKeysWithValues: layout.shapes.map { ($0.name, $0.shape) })
        XCTAssertEqual(shapes["roi_heads.box_head.conv1.weight"], [256, 256, 3, 3])
        XCTAssertEqual(shapes["roi_heads.box_head.conv4.norm.bias"], [256])
        XCTAssertNil(shapes["roi_heads.box_head.conv1.bias"], "convs with LN have no bias")
        XCTAssertEqual(shapes["roi_heads.box_head.fc1.weight"], [1024, 256 * 49])
        XCTAssertEqual(shapes["roi_heads.box_predictor.cls_score.weight"], [81, 1024])
        XCTAssertEqual(shapes["roi_heads.box_predictor.bbox_pred.bias"], [320])
        XCTAssertEqual(shapes["roi_heads.mask_head.mask_fcn4.norm.weight"], [256])
        XCTAssertEqual(shapes["roi_heads.mask_head.deconv.weight"], [256, 256, 2, 2])
        XCTAssertEqual(shapes["roi_heads.mask_head.deconv.bias"], [256])
        XCTAssertEqual(shapes["roi_heads.mask_head.predictor.weight"], [80, 256, 1, 1])
        XCTAssertEqual(layout.specs.count, 4 * 3 + 2 + 4 + 4 * 3 + 2 + 2)
    }

    func testBoxHeadForwardLossesAndGradientsMatchTorch() throws {
        let fx = try DenseFixture("roi_heads")
        var layout = ParameterLayout()
        let head = BoxHead(Self.config, in: &layout)
        let store = ParameterStore(layout: layout)
        try loaded(fx, "box", store)
        let x = try Tensor(fx.shape("box/x"), fx.floats("box/x"))
        let trace = head.forward(x, store)
        assertClose(trace.scores.output.array, try fx.floats("box/scores"), rtol: 1e-4, atol: 1e-5, "scores")
        assertClose(trace.deltas.output.array, try fx.floats("box/deltas"), rtol: 1e-4, atol: 1e-5, "deltas")
        let dScores = Tensor(trace.scores.output.shape), dDeltas = Tensor(trace.deltas.output.shape)
        let (cls, box) = BoxHead.losses(scores: trace.scores.output, deltas: trace.deltas.output,
                                        gtClasses: try fx.floats("box/gt_classes").map { Int($0) },
                                        targetDeltas: try fx.floats("box/target_deltas"), dScores: dScores, dDeltas: dDeltas)
        XCTAssertEqual(cls, try fx.floats("box/loss_cls")[0], accuracy: 1e-5)
        XCTAssertEqual(box, try fx.floats("box/loss_box_reg")[0], accuracy: 1e-5)
        store.zeroGrads()
        let dx = Tensor(x.shape)
        head.backward(trace, dScores: dScores, dDeltas: dDeltas, dFeatures: dx, store)
        assertClose(dx.array, try fx.floats("box/d_x"), rtol: 1e-3, atol: 1e-6, "d_x")
        for spec in store.specs {
            assertClose(Array(store.grad(spec.name)), try fx.floats("box/d_\(spec.name)"), rtol: 1e-3, atol: 1e-6, "d_\(spec.name)")
        }
    }

    func testMaskHeadForwardLossAndGradientsMatchTorch() throws {
        let fx = try DenseFixture("roi_heads")
        var layout = ParameterLayout()
        let head = MaskHead(Self.config, in: &layout)
        let store = ParameterStore(layout: layout)
        try loaded(fx, "mask", store)
        let x = try Tensor(fx.shape("mask/x"), fx.floats("mask/x"))
        let trace = head.forward(x, store)
        XCTAssertEqual(trace.output.shape, [5, 3, 28, 28])
        assertClose(trace.output.array, try fx.floats("mask/logits"), rtol: 1e-4, atol: 1e-5, "logits")
        let dLogits = Tensor(trace.output.shape)
        let loss = MaskHead.loss(logits: trace.output, classes: try fx.floats("mask/classes").map { Int($0) },
                                 targets: try fx.floats("mask/targets"), dLogits: dLogits)
        XCTAssertEqual(loss, try fx.floats("mask/loss_mask")[0], accuracy: 1e-5)
        store.zeroGrads()
        let dx = Tensor(x.shape)
        head.backward(trace, dLogits: dLogits, dFeatures: dx, store)
        assertClose(dx.array, try fx.floats("mask/d_x"), rtol: 1e-3, atol: 1e-7, "d_x")
        for spec in store.specs {
            assertClose(Array(store.grad(spec.name)), try fx.floats("mask/d_\(spec.name)"), rtol: 1e-3, atol: 1e-7, "d_\(spec.name)")
        }
    }

    /// The box losses' gradients in the scores and deltas against central differences (float64 sums).
    func testBoxLossGradientsMatchFiniteDifferences() {
        let rows = 6, k = 3
        let scores = randomValues(rows * (k + 1), seed: 1), deltas = randomValues(rows * 4 * k, seed: 2)
        let targets = randomValues(rows * 4, seed: 3)
        let classes = [0, 3, 2, 1, 3, 2]
        func losses(_ s: [Float], _ d: [Float]) -> (Float, Float, Tensor, Tensor) {
            let ds = Tensor([rows, k + 1]), dd = Tensor([rows, 4 * k])
            let (a, b) = BoxHead.losses(scores: Tensor([rows, k + 1], s), deltas: Tensor([rows, 4 * k], d), gtClasses: classes,
                                        targetDeltas: targets, dScores: ds, dDeltas: dd)
            return (a, b, ds, dd)
        }
        let (_, _, ds, dd) = losses(scores, deltas)
        checkGradient("loss_cls / scores", input: scores, analytic: ds.array, step: 1e-2) { Double(losses($0, deltas).0) }
        checkGradient("loss_box_reg / deltas", input: deltas, analytic: dd.array, step: 1e-3) { Double(losses(scores, $0).1) }
        // Background rows and other classes' deltas get no box gradient.
        for j in 0..<(4 * k) { XCTAssertEqual(dd[1 * 4 * k + j], 0) }
        for j in 0..<(4 * k) where j / 4 != 0 { XCTAssertEqual(dd[j], 0) }
        // No proposals: zero losses.
        let (a, b) = BoxHead.losses(scores: Tensor([0, k + 1]), deltas: Tensor([0, 4 * k]), gtClasses: [], targetDeltas: [],
                                    dScores: Tensor([0, k + 1]), dDeltas: Tensor([0, 4 * k]))
        XCTAssertEqual([a, b], [0, 0])
    }

    /// Through the whole mask head: the loss's gradient in the pooled features and in a conv weight
    /// against central differences.
    func testMaskHeadGradientsMatchFiniteDifferences() throws {
        let config = ROIHeadConfig(classes: 2, inChannels: 3, maskPooled: 4, convDim: 4, maskConvs: 2)
        var layout = ParameterLayout()
        let head = MaskHead(config, in: &layout)
        let store = ParameterStore(layout: layout)
        var rng = RandomStream(seed: 5)
        head.initialize(store, rng: &rng)
        // Larger predictor weights than detectron2's init, so the loss depends visibly on every layer.
        for (i, v) in randomValues(store.value("roi_heads.mask_head.predictor.weight").count, seed: 6, scale: 0.5).enumerated() {
            store.value("roi_heads.mask_head.predictor.weight")[i] = v
        }
        let x = randomValues(2 * 3 * 4 * 4, seed: 7)
        let classes = [1, 0]
        let targets = randomValues(2 * 8 * 8, seed: 8).map { $0 > 0 ? Float(1) : 0 }
        func loss(_ input: [Float]) -> (Float, LayerTrace, Tensor) {
            let trace = head.forward(Tensor([2, 3, 4, 4], input), store)
            let d = Tensor(trace.output.shape)
            return (MaskHead.loss(logits: trace.output, classes: classes, targets: targets, dLogits: d), trace, d)
        }
        let (_, trace, dLogits) = loss(x)
        store.zeroGrads()
        let dx = Tensor([2, 3, 4, 4])
        head.backward(trace, dLogits: dLogits, dFeatures: dx, store)
        checkGradient("d features", input: x, analytic: dx.array, step: 1e-2) { Double(loss($0).0) }
        let name = "roi_heads.mask_head.mask_fcn1.weight"
        let w0 = Array(store.value(name)), analytic = Array(store.grad(name))
        checkGradient("d \(name)", input: w0, analytic: analytic, step: 1e-3) { w in
            for (i, v) in w.enumerated() { store.value(name)[i] = v }
            defer { for (i, v) in w0.enumerated() { store.value(name)[i] = v } }
            return Double(loss(x).0)
        }
    }
}

/// The heads' weights by detectron2's names through every checkpoint format, and their sizes from the shapes.
final class DetectronCheckpointTests: XCTestCase {
    func testHeadSizesAreInferredFromTheWeights() throws {
        var layout = ParameterLayout()
        let config = ROIHeadConfig(classes: 5, inChannels: 12, boxPooled: 5, boxConvs: 3, convDim: 8, fcDim: 20, maskConvs: 2)
        _ = BoxHead(config, in: &layout)
        _ = MaskHead(config, in: &layout)
        let shapes = Dictionary(uniqueKeysWithValues: layout.shapes.map { ($0.name, $0.shape) })
        XCTAssertEqual(try ROIHeadConfig.inferred(from: shapes, source: "w"), config)
        var agnostic = shapes
        agnostic["roi_heads.box_predictor.bbox_pred.weight"] = [4, 20]
        XCTAssertThrowsError(try ROIHeadConfig.inferred(from: agnostic, source: "w.pkl")) {
            XCTAssertTrue("\($0)".contains("class-specific"), "\($0)")
        }
        var none = shapes
        none["roi_heads.box_predictor.cls_score.weight"] = nil
        XCTAssertThrowsError(try ROIHeadConfig.inferred(from: none, source: "w.pkl"))
    }

    /// Saved as safetensors, loaded back into a fresh store bit for bit; a missing or mis-shaped
    /// weight is refused by name.
    func testSaveLoadRoundTripAndRefusals() throws {
        var layout = ParameterLayout()
        let heads = ROIHeads(BoxMaskHeadTests.config, strides: [4, 8], in: &layout)
        let store = ParameterStore(layout: layout)
        var rng = RandomStream(seed: 4)
        heads.initialize(store, rng: &rng)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("d2-heads-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try DetectronCheckpoint.safetensors(store, metadata: ["format": "detectron2"]).write(to: url)
        let file = try CheckpointFile.open(url)
        let fresh = ParameterStore(layout: layout)
        let report = try DetectronCheckpoint.load(file, into: fresh)
        XCTAssertEqual(report.matched.count, layout.specs.count)
        XCTAssertEqual(fresh.values.array, store.values.array)
        var partial = file
        partial.tensors["roi_heads.mask_head.deconv.bias"] = nil
        XCTAssertThrowsError(try DetectronCheckpoint.load(partial, into: fresh)) {
            XCTAssertTrue("\($0)".contains("roi_heads.mask_head.deconv.bias"), "\($0)")
        }
    }
}
