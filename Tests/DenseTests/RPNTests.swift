import MAEDense
import MAEKernels
import MAEModels
import TestSupport
import XCTest

/// detectron2's StandardRPNHead + RPN against the torch restatement in scripts/make_detection_fixtures.py
/// ("rpn": two levels, 4 channels, 3 anchors per location, two images; every valid anchor is
/// sampled, so the losses do not depend on the draw), and against finite differences.
final class RPNTests: XCTestCase {
    private let anchors = AnchorGenerator(sizes: [[8], [16]], aspectRatios: [[0.5, 1, 2]], strides: [4, 8])

    private func makeRPN(batchSizePerImage: Int = 256) -> (RPN, ParameterStore) {
        var layout = ParameterLayout()
        var rpn = RPN(in: &layout, channels: 4, anchors: anchors)
        rpn.trainingSelection = ProposalSelection(preNMSTopK: 20, postNMSTopK: 10)
        rpn.batchSizePerImage = batchSizePerImage
        return (rpn, ParameterStore(layout: layout))
    }

    /// detectron2's names for conv_dims [-1, -1].
    func testParameterNamesAreDetectron2s() {
        var layout = ParameterLayout()
        _ = RPN(in: &layout)
        let p = "proposal_generator.rpn_head."
        XCTAssertEqual(layout.shapes.map(\.name), ["conv.conv0.weight", "conv.conv0.bias", "conv.conv1.weight", "conv.conv1.bias",
                                                  "objectness_logits.weight", "objectness_logits.bias",
                                                  "anchor_deltas.weight", "anchor_deltas.bias"].map { p + $0 })
        XCTAssertEqual(layout.shapes.map(\.shape), [[256, 256, 3, 3], [256], [256, 256, 3, 3], [256], [3, 256, 1, 1], [3],
                                                   [12, 256, 1, 1], [12]])
        var single = ParameterLayout()
        _ = RPN(in: &single, convDims: [-1])
        XCTAssertEqual(single.shapes.first?.name, p + "conv.weight")
    }

    /// Losses, sampled counts, proposals, and every parameter and feature gradient.
    func testRPNMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        let (rpn, params) = makeRPN()
        for spec in params.specs {
            let key = "rpn/param/" + spec.name.replacingOccurrences(of: "proposal_generator.rpn_head.", with: "")
            try params.set(spec.name, shape: try fx.shape(key), try fx.floats(key))
        }
        let features = try [4, 8].enumerated().map { l, s in
            FeatureMap(Tensor(try fx.shape("rpn/feature\(l)"), try fx.floats("rpn/feature\(l)")), stride: s)
        }
        let gt = try [fx.boxes("rpn/gt0"), fx.boxes("rpn/gt1")]
        var stream = RandomStream(seed: 1)
        let out = try rpn.forward(features: features, imageSizes: [(24, 22), (20, 24)], gtBoxes: gt, params: params,
                                  training: true, stream: &stream)
        let losses = try fx.floats("rpn/losses"), counts = try fx.ints("rpn/counts")
        assertClose([out.losses["loss_rpn_cls"]!, out.losses["loss_rpn_loc"]!], losses, rtol: 1e-5, atol: 1e-7, "losses")
        XCTAssertEqual([out.sampledPositives, out.sampledNegatives], counts)
        for b in 0..<2 {
            XCTAssertEqual(out.proposals[b].levels, try fx.ints("rpn/proposal_levels\(b)"), "image \(b) levels")
            assertClose(out.proposals[b].logits, try fx.floats("rpn/proposal_logits\(b)"), rtol: 1e-5, atol: 1e-6, "image \(b) logits")
            assertClose(coordinates(out.proposals[b].boxes), try fx.floats("rpn/proposals\(b)"), rtol: 1e-5, atol: 1e-4,
                        "image \(b) proposals")
        }
        let dFeatures = features.map { FeatureMap(batch: $0.batch, channels: $0.channels, height: $0.height, width: $0.width, stride: $0.stride) }
        params.zeroGrads()
        rpn.backward(out.context, params: params, featureGradients: dFeatures)
        for spec in params.specs {
            let key = "rpn/grad/" + spec.name.replacingOccurrences(of: "proposal_generator.rpn_head.", with: "")
            assertClose(Array(params.grad(spec.name)), try fx.floats(key), rtol: 1e-4, atol: 1e-6, spec.name)
        }
        for l in 0..<2 {
            assertClose(dFeatures[l].tensor.array, try fx.floats("rpn/d_feature\(l)"), rtol: 1e-4, atol: 1e-6, "d_feature\(l)")
        }
    }

    /// d(loss_rpn_cls + loss_rpn_loc) by central differences on the features and on the deltas
    /// conv's weight, with 16 anchors sampled per image (the same draw at every evaluation).
    func testRPNGradientsMatchFiniteDifferences() throws {
        let (rpn, params) = makeRPN(batchSizePerImage: 16)
        var rng = RandomStream(seed: 5)
        rpn.initialize(params, rng: &rng)
        // Larger weights than detectron2's 0.01 so the losses move measurably.
        for i in 0..<params.values.count { params.values[i] *= 30 }
        let shapes = [[2, 4, 6, 6], [2, 4, 3, 3]]
        let values = shapes.enumerated().map { randomValues($1.reduce(1, *), seed: UInt64(40 + $0)) }
        let gt: [[Box]] = [[Box(2, 3, 11.5, 9), Box(12, 10, 21, 23)], []]
        func run(_ v: [[Float]]) throws -> RPNOutput {
            let features = zip(v, zip(shapes, [4, 8])).map { FeatureMap(Tensor($1.0, $0), stride: $1.1) }
            var stream = RandomStream(seed: 7)
            return try rpn.forward(features: features, imageSizes: [(24, 22), (20, 24)], gtBoxes: gt, params: params,
                                   training: true, stream: &stream)
        }
        let out = try run(values)
        XCTAssertEqual(out.sampledPositives + out.sampledNegatives, 32)
        XCTAssertGreaterThan(out.losses["loss_rpn_loc"]!, 0)
        let dFeatures = shapes.enumerated().map { FeatureMap(Tensor($1), stride: [4, 8][$0]) }
        params.zeroGrads()
        rpn.backward(out.context, params: params, featureGradients: dFeatures)
        func total(_ o: RPNOutput) -> Double { Double(o.losses["loss_rpn_cls"]!) + Double(o.losses["loss_rpn_loc"]!) }
        for l in 0..<2 {
            checkGradient("feature\(l)", input: values[l], analytic: dFeatures[l].tensor.array, step: 1e-2) { x in
                var v = values
                v[l] = x
                return total(try! run(v))
            }
        }
        let name = "proposal_generator.rpn_head.anchor_deltas.weight"
        let w = Array(params.value(name)), analytic = Array(params.grad(name))
        checkGradient("anchor_deltas.weight", input: w, analytic: analytic, step: 1e-2) { x in
            try! params.set(name, shape: [12, 4, 1, 1], x)
            defer { try! params.set(name, shape: [12, 4, 1, 1], w) }
            return total(try! run(values))
        }
    }

    /// An image without ground truth samples only background (no localisation loss); without
    /// ground truth at inference there are no losses, and the test top-k applies.
    func testEmptyGroundTruthAndInference() throws {
        let (rpn, params) = makeRPN()
        var rng = RandomStream(seed: 8)
        rpn.initialize(params, rng: &rng)
        let features = [FeatureMap(Tensor([1, 4, 6, 6], randomValues(144, seed: 9)), stride: 4),
                        FeatureMap(Tensor([1, 4, 3, 3], randomValues(36, seed: 10)), stride: 8)]
        var stream = RandomStream(seed: 1)
        let out = try rpn.forward(features: features, imageSizes: [(24, 24)], gtBoxes: [[]], params: params,
                                  training: true, stream: &stream)
        XCTAssertEqual(out.sampledPositives, 0)
        XCTAssertEqual(out.sampledNegatives, 135, "all 6*6*3 + 3*3*3 anchors are background")
        XCTAssertEqual(out.losses["loss_rpn_loc"], 0)
        XCTAssertEqual(Double(out.losses["loss_rpn_cls"]!), 135 * log(2) / 256, accuracy: 1e-3, "logits near 0 at init")
        let test = try rpn.forward(features: features, imageSizes: [(24, 24)], gtBoxes: nil, params: params,
                                   training: false, stream: &stream)
        XCTAssertTrue(test.losses.isEmpty)
        XCTAssertLessThanOrEqual(test.proposals[0].count, 1000)
        XCTAssertGreaterThan(test.proposals[0].count, 0)
        XCTAssertEqual(test.proposals[0].logits, test.proposals[0].logits.sorted(by: >), "best first")
    }
}
