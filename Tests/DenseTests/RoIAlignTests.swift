import MAEDense
import MAEKernels
import TestSupport
import XCTest

/// RoIAlign (torchvision's CPU kernel, detectron2's aligned=True), the multi-level pooler and the
/// mask conversions against scripts/make_detection_fixtures.py.
final class RoIAlignTests: XCTestCase {
    private func size(_ fx: DetectionFixture, _ name: String) throws -> RoIAlignSize {
        let z = try fx.ints("\(name)/sizes"), scale = try fx.floats("\(name)/scale")[0]
        return RoIAlignSize(batch: z[0], channels: z[1], height: z[2], width: z[3], pooledHeight: z[4], pooledWidth: z[5],
                            spatialScale: scale, samplingRatio: z[6], aligned: z[7] == 1)
    }

    private func forward(_ input: [Float], _ rois: [Float], _ s: RoIAlignSize) -> [Float] {
        let r = rois.count / 5
        var out = [Float](repeating: .nan, count: r * s.channels * s.pooledHeight * s.pooledWidth)
        out.withUnsafeMutableBufferPointer { roiAlignForward(out: $0.baseAddress!, input: input, rois: rois, roiCount: r, size: s) }
        return out
    }

    private func backward(_ gradOut: [Float], _ rois: [Float], _ s: RoIAlignSize, start: Float = 0) -> [Float] {
        var d = [Float](repeating: start, count: s.batch * s.channels * s.height * s.width)
        d.withUnsafeMutableBufferPointer { roiAlignBackward(dInput: $0.baseAddress!, dOut: gradOut, rois: rois, roiCount: rois.count / 5, size: s) }
        return d
    }

    /// Rois inside, partly outside, wholly beyond -1, past the last row, sub-cell, empty and the
    /// whole map; adaptive sampling, sampling ratio 2, the legacy aligned=False, and 7x7 at 1/4.
    /// The backward accumulates (onto 0.5).
    func testRoIAlignMatchesTorchvision() throws {
        let fx = try DetectionFixture()
        for name in ["roi_aligned", "roi_sampling2", "roi_legacy", "roi_7x7"] {
            let s = try size(fx, name), rois = try fx.floats("\(name)/rois")
            assertClose(forward(try fx.floats("\(name)/input"), rois, s), try fx.floats("\(name)/out"),
                        rtol: 1e-5, atol: 1e-6, "\(name) forward")
            assertClose(backward(try fx.floats("\(name)/grad_out"), rois, s, start: 0.5),
                        try fx.floats("\(name)/d_input").map { $0 + 0.5 }, rtol: 1e-5, atol: 1e-6, "\(name) backward")
        }
    }

    /// Aligned and empty: no samples, so zeros, and no gradient.
    func testEmptyAlignedRoIPoolsZero() throws {
        let fx = try DetectionFixture()
        let s = try size(fx, "roi_aligned")
        let out = forward(try fx.floats("roi_aligned/input"), [1, 7, 7, 7, 7], s)
        XCTAssertEqual(out, [Float](repeating: 0, count: out.count))
        XCTAssertEqual(Set(backward([Float](repeating: 1, count: out.count), [1, 7, 7, 7, 7], s)), [0])
    }

    /// Central differences of sum(roi_align(x) * r) on every input coordinate (linear in x).
    func testRoIAlignBackwardMatchesFiniteDifferences() {
        let s = RoIAlignSize(batch: 2, channels: 2, height: 6, width: 7, pooledHeight: 3, pooledWidth: 2,
                             spatialScale: 0.5, samplingRatio: 0, aligned: true)
        let rois: [Float] = [0, 1.3, 0.7, 11.2, 9.9, 1, -2.5, 3.1, 6.4, 14.0, 0, 5.0, 5.0, 5.9, 6.3]
        let x = randomValues(s.batch * s.channels * s.height * s.width, seed: 31)
        let r = randomValues(3 * s.channels * 6, seed: 32)
        let analytic = backward(r, rois, s)
        checkGradient("roi_align", input: x, analytic: analytic, step: 1e-2, rtol: 1e-3, atol: 1e-4, samples: x.count) {
            zip(self.forward($0, rois, s), r).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
        }
    }

    /// detectron2's level assignment floor(4 + log2(sqrt(area)/224 + 1e-8)) clamped to p2..p5 (sides
    /// at the 112/224/448 boundaries: 223.9 is level 3 where torchvision's LevelMapper says 4), and
    /// the pooled values and per-level gradients.
    func testMultiLevelPoolerMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        let strides = [4, 8, 16, 32]
        let pooler = RoIPooler(outputSize: 7, strides: strides)
        let features = try strides.indices.map { l -> FeatureMap in
            let key = "pooler/p\(l + 2)"
            return FeatureMap(Tensor(try fx.shape(key), try fx.floats(key)), stride: strides[l])
        }
        let rois = try fx.floats("pooler/rois")
        let count = rois.count / 5
        var boxes: [[Box]] = [[], []]
        for r in 0..<count { boxes[Int(rois[5 * r])].append(Box(xyxy: Array(rois[(5 * r + 1)..<(5 * r + 5)]))) }
        // The fixture's rois alternate images; the pooler orders image 0's boxes first.
        let order = (0..<count).filter { rois[5 * $0] == 0 } + (0..<count).filter { rois[5 * $0] == 1 }
        let expectedLevels = try fx.ints("pooler/levels")
        XCTAssertEqual(boxes.flatMap { $0 }.map { pooler.level(of: $0) }, order.map { expectedLevels[$0] })
        XCTAssertEqual(pooler.level(of: Box(0, 0, 223.9, 223.9)), 1, "level 3, not torchvision's 4")
        XCTAssertEqual(pooler.level(of: Box(0, 0, 224, 224)), 2)
        let (out, context) = pooler.forward(features: features, boxes: boxes)
        let per = 2 * 7 * 7, expected = try fx.floats("pooler/out"), g = try fx.floats("pooler/grad_out")
        assertClose(out.array, order.flatMap { Array(expected[($0 * per)..<(($0 + 1) * per)]) }, rtol: 1e-5, atol: 1e-6, "pooled")
        let dOut = Tensor(out.shape, order.flatMap { Array(g[($0 * per)..<(($0 + 1) * per)]) })
        let grads = features.map { FeatureMap(batch: $0.batch, channels: $0.channels, height: $0.height, width: $0.width, stride: $0.stride) }
        pooler.backward(dFeatures: grads, dOut: dOut, context: context)
        for l in strides.indices {
            assertClose(grads[l].tensor.array, try fx.floats("pooler/d_p\(l + 2)"), rtol: 1e-5, atol: 1e-6, "d_p\(l + 2)")
        }
    }

    /// BitMasks.crop_and_resize: RoIAlign(28, 1.0, 0, aligned=True) of each mask, >= 0.5.
    func testMaskTargetsMatchDetectron2() throws {
        let fx = try DetectionFixture()
        let shape = try fx.shape("mask_targets/masks"), values = try fx.floats("mask_targets/masks")
        let plane = shape[1] * shape[2]
        let masks = (0..<shape[0]).map { i in values[(i * plane)..<((i + 1) * plane)].map { UInt8($0) } }
        let targets = maskTargets(masks: masks, height: shape[1], width: shape[2], boxes: try fx.boxes("mask_targets/boxes"))
        XCTAssertEqual(targets.shape, [3, 28, 28])
        XCTAssertEqual(targets.array, try fx.floats("mask_targets/targets"))
    }

    /// paste_masks_in_image by grid_sample, boxes partly outside the image and sub-pixel ones.
    func testPasteMasksMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        let probs = Tensor(try fx.shape("paste/probabilities"), try fx.floats("paste/probabilities"))
        let pasted = pasteMasks(probabilities: probs, boxes: try fx.boxes("paste/boxes"), imageHeight: 30, imageWidth: 40)
        let expected = try fx.floats("paste/masks")
        let got = pasted.flatMap { $0.map(Float.init) }
        XCTAssertEqual(got.count, expected.count)
        let differing = zip(got, expected).filter { $0 != $1 }.count
        XCTAssertEqual(differing, 0, "pixels differing from detectron2's paste")
        XCTAssertGreaterThan(expected.reduce(0, +), 100, "the fixture pastes something")
    }
}
