import MAEDense
import MAEKernels
import TestSupport
import XCTest

/// The pure detection ops against torch restatements of detectron2 (scripts/make_detection_fixtures.py).
final class DetectionOpsTests: XCTestCase {
    /// pairwise_iou, with the empty-box trap: two identical empty boxes give 0 (torchvision: NaN).
    func testPairwiseIoUMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        let a = try fx.boxes("iou/a"), b = try fx.boxes("iou/b")
        let iou = pairwiseIoU(a, b)
        assertClose(iou, try fx.floats("iou/iou"), rtol: 1e-6, atol: 1e-7, "iou")
        XCTAssertEqual(iou[8 * b.count + 6], 0, "two empty boxes")
        XCTAssertEqual(iou[2 * b.count + 5], 1, "identical boxes")
    }

    func testAreaClipAndNonEmpty() {
        let box = Box(-3, 2, 12, 30)
        XCTAssertEqual(box.area, 15 * 28)
        XCTAssertEqual(box.clipped(height: 20, width: 10), Box(0, 2, 10, 20))
        XCTAssertEqual(Box(5, 5, 5, 9).isNonEmpty(), false, "zero width")
        XCTAssertEqual(Box(5, 5, 5.5, 9).isNonEmpty(threshold: 0.5), false, "a side equal to the threshold is empty")
        XCTAssertEqual(Box(5, 5, 5.6, 9).isNonEmpty(threshold: 0.5), true)
        XCTAssertEqual(Box(9, 0, 8, 4).area, -4, "an inverted box has negative area, as detectron2")
    }

    /// ViTDet's anchors (unrounded cells, offset 0, order level, y, x, ratio) and a level with two
    /// sizes at offset 0.5.
    func testAnchorsMatchDetectron2() throws {
        let fx = try DetectionFixture()
        let z = try fx.ints("anchors_vitdet/sizes")
        let generator = AnchorGenerator(sizes: [[32], [64], [128]], aspectRatios: [[0.5, 1, 2]], strides: [4, 8, 16])
        let anchors = generator.anchors(gridSizes: [(z[0], z[1]), (z[2], z[3]), (z[4], z[5])])
        assertClose(coordinates(anchors.flatMap { $0 }), try fx.floats("anchors_vitdet/anchors"), rtol: 0, atol: 0, "vitdet anchors")
        XCTAssertEqual(generator.cellAnchors(level: 0)[0].x0, -22.627417, accuracy: 1e-5, "not rounded to -23")
        let offset = AnchorGenerator(sizes: [[16, 24]], aspectRatios: [[0.5, 1, 2]], strides: [8], offset: 0.5)
        assertClose(coordinates(offset.anchors(level: 0, height: 2, width: 3)), try fx.floats("anchors_offset/anchors"),
                    rtol: 0, atol: 0, "offset anchors")
        XCTAssertEqual(AnchorGenerator.vitDet.anchors(gridSizes: [(256, 256), (128, 128), (64, 64), (32, 32), (16, 16)])
                        .map(\.count).reduce(0, +), 261_888, "ViTDet's anchor count at 1024^2")
    }

    /// get_deltas and apply_deltas with the RPN's (1,1,1,1) and the box head's (10,10,5,5)
    /// weights, including deltas past the log(1000/16) clamp.
    func testBoxCodingMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        for (name, w) in [("coding_rpn", (Float(1), Float(1), Float(1), Float(1))), ("coding_roi", (10, 10, 5, 5))] {
            let coder = BoxTransform(weights: w)
            let src = try fx.boxes("\(name)/src"), target = try fx.boxes("\(name)/target")
            let deltas = zip(src, target).flatMap { s, t -> [Float] in
                let d = coder.deltas(from: s, to: t)
                return [d.0, d.1, d.2, d.3]
            }
            assertClose(deltas, try fx.floats("\(name)/deltas"), rtol: 1e-5, atol: 1e-6, "\(name) deltas")
            let applied = try fx.floats("\(name)/apply_deltas")   // (16, 8): two boxes per source
            var decoded: [Float] = []
            for i in src.indices {
                for k in 0..<2 {
                    let d = applied[(8 * i + 4 * k)..<(8 * i + 4 * k + 4)].map { $0 }
                    decoded += coder.apply((d[0], d[1], d[2], d[3]), to: src[i]).values
                }
            }
            assertClose(decoded, try fx.floats("\(name)/decoded"), rtol: 1e-5, atol: 1e-4, "\(name) decoded")
            XCTAssertEqual(coder.scaleClamp, logf(1000 / 16))
        }
    }

    /// The RPN matcher (0.3 / 0.7, low-quality matches with a tied best) and the RoI matcher (0.5).
    func testMatcherMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        for (name, matcher) in [("match_rpn", Matcher.rpn), ("match_roi", Matcher.roiHeads)] {
            let gt = try fx.boxes("\(name)/gt"), anchors = try fx.boxes("\(name)/anchors")
            let quality = pairwiseIoU(gt, anchors)
            assertClose(quality, try fx.floats("\(name)/quality"), rtol: 1e-6, atol: 1e-7, "\(name) quality")
            let (matches, labels) = matcher(quality: try fx.floats("\(name)/quality"), groundTruths: gt.count,
                                            predictions: anchors.count)
            XCTAssertEqual(matches, try fx.ints("\(name)/matches"), name)
            XCTAssertEqual(labels.map(Int.init), try fx.ints("\(name)/labels"), name)
        }
    }

    /// Empty ground truth: all background (torchvision raises); and the tie rule by hand.
    func testMatcherEdgeCases() {
        let (m, l) = Matcher.rpn(quality: [], groundTruths: 0, predictions: 3)
        XCTAssertEqual(m, [0, 0, 0]); XCTAssertEqual(l, [0, 0, 0])
        // gt 0's best is 0.4 (predictions 1 and 2, tied): both become foreground, prediction 1
        // from "ignored"; prediction 3 (best 0.2) stays background.
        let q: [Float] = [0.1, 0.4, 0.4, 0.2,
                          0.0, 0.2, 0.9, 0.0]
        let (m2, l2) = Matcher.rpn(quality: q, groundTruths: 2, predictions: 4)
        XCTAssertEqual(m2, [0, 0, 1, 0]); XCTAssertEqual(l2, [0, 1, 1, 0])
        let (_, l3) = Matcher.roiHeads(quality: q, groundTruths: 2, predictions: 4)
        XCTAssertEqual(l3, [0, 0, 1, 0])
        // detectron2's quirk: a ground truth overlapping nothing has best IoU 0, so every
        // prediction at IoU 0 with it is labelled foreground.
        let (_, l4) = Matcher.rpn(quality: [0.8, 0, 0.1, 0, 0, 0], groundTruths: 2, predictions: 3)
        XCTAssertEqual(l4, [1, 1, 1])
    }

    /// subsample_labels' deterministic part: the counts (torchvision's sampler draws the same), the
    /// sets drawn from (positives only among fg, negatives only bg, never an ignored one), and a
    /// seed that fixes the draw.
    func testSubsampleLabelsCountsAndMembership() throws {
        let fx = try DetectionFixture()
        let labels = try fx.ints("sample/labels"), counts = try fx.ints("sample/counts")
        var stream = RandomStream(seed: 3)
        let (pos, neg) = subsampleLabels(labels, numSamples: 16, positiveFraction: 0.25, backgroundLabel: 0, stream: &stream)
        XCTAssertEqual([pos.count, neg.count], counts)
        XCTAssertTrue(pos.allSatisfy { labels[$0] == 1 } && neg.allSatisfy { labels[$0] == 0 })
        XCTAssertEqual(Set(pos).count + Set(neg).count, 16, "no index drawn twice")
        var again = RandomStream(seed: 3)
        let second = subsampleLabels(labels, numSamples: 16, positiveFraction: 0.25, backgroundLabel: 0, stream: &again)
        XCTAssertEqual(second.positive, pos); XCTAssertEqual(second.negative, neg)
        // Too few negatives: as many as exist; too few positives: negatives fill the sample.
        var s = RandomStream(seed: 4)
        let few = subsampleLabels([1, 1, 1, 0, -1], numSamples: 8, positiveFraction: 0.5, backgroundLabel: 0, stream: &s)
        XCTAssertEqual([few.positive.count, few.negative.count], [3, 1])
        let fill = subsampleLabels([1, 0, 0, 0, 0, 0, -1], numSamples: 4, positiveFraction: 0.5, backgroundLabel: 0, stream: &s)
        XCTAssertEqual([fill.positive.count, fill.negative.count], [1, 3])
    }

    /// torchvision nms and batched_nms at 0.5 and 0.7 on clustered boxes with distinct scores.
    func testNMSMatchesTorchvision() throws {
        let fx = try DetectionFixture()
        let boxes = try fx.boxes("nms/boxes"), scores = try fx.floats("nms/scores"), groups = try fx.ints("nms/groups")
        for (thr, tag) in [(Float(0.5), "5"), (0.7, "7")] {
            XCTAssertEqual(nonMaximumSuppression(boxes: boxes, scores: scores, threshold: thr), try fx.ints("nms/keep_\(tag)"))
            XCTAssertEqual(batchedNonMaximumSuppression(boxes: boxes, scores: scores, groups: groups, threshold: thr),
                           try fx.ints("nms/batched_keep_\(tag)"))
        }
    }

    /// Strict IoU > threshold suppresses: IoU exactly 0.5 is kept; equal scores go by index.
    func testNMSKeepsIoUEqualToThresholdAndBreaksTiesByIndex() {
        let boxes = [Box(0, 0, 3, 1), Box(1, 0, 4, 1), Box(0, 0, 3, 1)]   // IoU(0,1) = 2/4 = 0.5
        XCTAssertEqual(nonMaximumSuppression(boxes: boxes, scores: [0.9, 0.8, 0.9], threshold: 0.5), [0, 1])
        XCTAssertEqual(nonMaximumSuppression(boxes: boxes, scores: [0.9, 0.8, 0.9], threshold: 0.49), [0])
        XCTAssertEqual(batchedNonMaximumSuppression(boxes: boxes, scores: [0.7, 0.8, 0.9], groups: [0, 0, 1], threshold: 0.3),
                       [2, 1], "box 2 is in its own group")
    }

    /// find_top_rpn_proposals over three levels and two images (a level smaller than the top-k).
    func testProposalSelectionMatchesDetectron2() throws {
        let fx = try DetectionFixture()
        let z = try fx.ints("proposals/sizes")
        let coder = BoxTransform(weights: (1, 1, 1, 1))
        let selection = ProposalSelection(preNMSTopK: z[4], postNMSTopK: z[5])
        for image in 0..<2 {
            var boxes: [[Box]] = [], logits: [[Float]] = []
            for level in 0..<3 {
                let anchors = try fx.boxes("proposals/anchors_\(level)")
                let deltas = try fx.floats("proposals/deltas_\(level)"), all = try fx.floats("proposals/logits_\(level)")
                let n = anchors.count
                boxes.append(Array(deltas[(image * 4 * n)..<((image + 1) * 4 * n)]).withUnsafeBufferPointer {
                    coder.apply(deltas: $0.baseAddress!, to: anchors)
                })
                logits.append(Array(all[(image * n)..<((image + 1) * n)]))
            }
            let p = try selectProposals(boxes: boxes, logits: logits, imageHeight: z[2 * image], imageWidth: z[2 * image + 1],
                                        selection: selection, training: true)
            XCTAssertEqual(p.levels, try fx.ints("proposals/levels_image\(image)"), "image \(image) levels")
            XCTAssertEqual(p.logits, try fx.floats("proposals/logits_image\(image)"), "image \(image) logits")
            assertClose(coordinates(p.boxes), try fx.floats("proposals/boxes_image\(image)"), rtol: 1e-5, atol: 1e-4,
                        "image \(image) boxes")
        }
    }

    /// A non-finite box: dropped at inference, an error in training (detectron2's "diverged").
    func testProposalSelectionRefusesNonFiniteInTraining() throws {
        let boxes = [[Box(1, 1, 5, 5), Box(0, 0, .nan, 3)]], logits: [[Float]] = [[0.5, 0.9]]
        let p = try selectProposals(boxes: boxes, logits: logits, imageHeight: 10, imageWidth: 10,
                                    selection: .inference, training: false)
        XCTAssertEqual(p.boxes, [Box(1, 1, 5, 5)])
        XCTAssertThrowsError(try selectProposals(boxes: boxes, logits: logits, imageHeight: 10, imageWidth: 10,
                                                 selection: .training, training: true))
    }

    /// topK agrees with a full sort on values with ties (ties by index).
    func testTopKMatchesFullSort() {
        var rng = RandomStream(seed: 9)
        let values = (0..<500).map { _ in Float(rng.below(60)) }
        let full = values.indices.sorted { values[$0] > values[$1] || (values[$0] == values[$1] && $0 < $1) }
        for k in [1, 7, 100, 499, 500, 800] {
            XCTAssertEqual(topKIndices(values, k), Array(full.prefix(k)), "k \(k)")
        }
    }
}
