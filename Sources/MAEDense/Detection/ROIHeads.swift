import Foundation
import MAEKernels
import MAEModels

/// One training image's objects in the network's input frame.
public struct GroundTruth: Sendable {
    /// Boxes (XYXY input pixels), one per object.
    public var boxes: [Box]
    /// Class index 0..<K per object.
    public var classes: [Int]
    /// One row-major 0/1 mask per object over `maskHeight` x `maskWidth` (the padded input).
    public var masks: [[UInt8]]
    public var maskHeight: Int, maskWidth: Int

    public init(boxes: [Box], classes: [Int], masks: [[UInt8]], maskHeight: Int, maskWidth: Int) {
        precondition(boxes.count == classes.count && masks.count == boxes.count, "one box, class and mask per object")
        self.boxes = boxes; self.classes = classes; self.masks = masks
        self.maskHeight = maskHeight; self.maskWidth = maskWidth
    }

    public var count: Int { boxes.count }
}

/// One image's detections in its input frame (before rescaling to the original image).
public struct Detections {
    /// Clipped to the image's extent in the input, best score first.
    public var boxes: [Box]
    public var scores: [Float]
    /// Class index 0..<K.
    public var classes: [Int]
    /// Each detection's soft mask over its box: (N, 2M, 2M) sigmoid probabilities of its class.
    public var maskProbabilities: Tensor

    public init(boxes: [Box], scores: [Float], classes: [Int], maskProbabilities: Tensor) {
        self.boxes = boxes; self.scores = scores; self.classes = classes; self.maskProbabilities = maskProbabilities
    }

    public var count: Int { boxes.count }
}

/// One image's detections at its original size, as detectron2's `detector_postprocess` leaves them.
public struct ImageDetections: Sendable {
    public var boxes: [Box]
    public var scores: [Float]
    public var classes: [Int]
    /// Row-major 0/1 masks at the original height x width.
    public var masks: [[UInt8]]

    public init(boxes: [Box], scores: [Float], classes: [Int], masks: [[UInt8]]) {
        self.boxes = boxes; self.scores = scores; self.classes = classes; self.masks = masks
    }
}

/// Mask R-CNN's RoI heads as detectron2's `StandardROIHeads` under ViTDet's config: proposals matched to
/// the ground truth at IoU 0.5 (no low-quality matches) with the ground-truth boxes appended after them,
/// 512 sampled per image at 0.25 foreground, boxes pooled 7x7 and masks 14x14 (ROIAlignV2, canonical
/// level assignment) from the pyramid levels of `strides` (p2..p5), the box head and predictor
/// (`BoxHead`, deltas with weights 10, 10, 5, 5) and the mask head (`MaskHead`) trained on the sampled
/// foreground proposals. Inference: softmax, background dropped, class-specific boxes clipped, scores
/// > 0.05, class-wise NMS at 0.5, the best 100, masks predicted on the kept boxes.
public struct ROIHeads {
    public let config: ROIHeadConfig
    public let boxHead: BoxHead
    public let maskHead: MaskHead
    public let boxPooler: RoIPooler
    public let maskPooler: RoIPooler
    public var matcher = Matcher.roiHeads
    public var boxTransform = BoxTransform(weights: (10, 10, 5, 5))
    public var batchSizePerImage = 512
    public var positiveFraction = 0.25
    public var scoreThreshold: Float = 0.05
    public var nmsThreshold: Float = 0.5
    public var detectionsPerImage = 100

    /// `strides` are the pooled levels' strides (ViTDet: p2..p5, 4...32).
    public init(_ config: ROIHeadConfig, strides: [Int], in layout: inout ParameterLayout) {
        self.config = config
        boxHead = BoxHead(config, in: &layout)
        maskHead = MaskHead(config, in: &layout)
        boxPooler = RoIPooler(outputSize: config.boxPooled, strides: strides)
        maskPooler = RoIPooler(outputSize: config.maskPooled, strides: strides)
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        boxHead.initialize(params, rng: &rng)
        maskHead.initialize(params, rng: &rng)
    }

    /// One image's sampled proposals: boxes, gt classes (K = background) and, for the foreground,
    /// the matched object.
    public struct Sample {
        public var boxes: [Box]
        public var classes: [Int]
        public var matched: [Int]
    }

    /// detectron2's `label_and_sample_proposals` for one image: ground truth appended to `proposals`,
    /// IoU matching, then `subsample_labels` (draws from `stream`; positives first).
    public func sample(proposals: [Box], truth: GroundTruth, stream: inout RandomStream) -> Sample {
        subsample(label(proposals: proposals, truth: truth), stream: &stream)
    }

    /// One image's proposals with the ground truth appended, labelled by IoU matching (gt class, K
    /// for background, -1 ignored) before `subsample` draws from them.
    public func label(proposals: [Box], truth: GroundTruth) -> Sample {
        let k = config.classes
        let boxes = proposals + truth.boxes
        var classes: [Int], matched: [Int]
        if truth.count > 0 {
            let (matches, labels) = matcher(quality: pairwiseIoU(truth.boxes, boxes), groundTruths: truth.count,
                                            predictions: boxes.count)
            matched = matches
            classes = matches.indices.map { i in labels[i] == 0 ? k : (labels[i] == -1 ? -1 : truth.classes[matches[i]]) }
        } else {
            matched = [Int](repeating: 0, count: boxes.count)
            classes = [Int](repeating: k, count: boxes.count)
        }
        return Sample(boxes: boxes, classes: classes, matched: matched)
    }

    /// `subsampleLabels` of a labelled image (draws from `stream`; positives first).
    public func subsample(_ labelled: Sample, stream: inout RandomStream) -> Sample {
        let (positive, negative) = subsampleLabels(labelled.classes, numSamples: batchSizePerImage, positiveFraction: positiveFraction,
                                                   backgroundLabel: config.classes, stream: &stream)
        let chosen = positive + negative
        return Sample(boxes: chosen.map { labelled.boxes[$0] }, classes: chosen.map { labelled.classes[$0] },
                      matched: chosen.map { labelled.matched[$0] })
    }

    /// Loss terms by detectron2's names.
    public struct Losses {
        public var classification: Float, boxRegression: Float, mask: Float
        public var terms: [String: Float] { ["loss_cls": classification, "loss_box_reg": boxRegression, "loss_mask": mask] }
    }

    /// What the backward needs: each head's pooling, trace and loss gradient (nil when it saw no RoIs).
    public struct TrainingContext {
        let box: (pool: RoIPooler.Context, trace: BoxHead.Trace, dScores: Tensor, dDeltas: Tensor)?
        let mask: (pool: RoIPooler.Context, trace: LayerTrace, dLogits: Tensor)?
    }

    /// Training forward over a batch: `features` are the pooled levels (B, C, H, W) of `strides`,
    /// `proposals[b]` image b's RPN proposals (detached), `truth[b]` its objects. Returns the three
    /// losses (each with unit weight, as ViTDet) and the context for `backward`.
    ///
    /// With `global` (data parallelism) the images before this rank's rows have their draws
    /// replayed first, so every image samples what one process samples, and the losses are
    /// normalised by the global batch's counts times the rank's share s (loss_cls and loss_box_reg
    /// by all sampled RoIs, loss_mask by the foreground RoIs): weighted by s and summed over the
    /// ranks, as the data-parallel step does, they are the one-process losses.
    public func forwardTraining(features: [FeatureMap], proposals: [[Box]], truth: [GroundTruth], _ params: ParameterStore,
                                stream: inout RandomStream, global: GlobalBatch? = nil) -> (Losses, TrainingContext) {
        precondition(proposals.count == truth.count, "\(proposals.count) proposal lists for \(truth.count) images")
        let labelled = truth.indices.map { b in label(proposals: proposals[b], truth: truth[b]) }
        var normalizers: (rows: Double, foreground: Double)?
        if let global {
            let all = global.candidates(labelled.map { subsampleCandidates($0.classes, backgroundLabel: config.classes) })
            global.skipEarlierImages(all, stream: &stream)
            let kept = all.map { subsampleSizes($0, numSamples: batchSizePerImage, positiveFraction: positiveFraction) }
            let share = global.shard.weight
            normalizers = (Double(kept.reduce(0) { $0 + $1.positive + $1.negative }) * share,
                           Double(kept.reduce(0) { $0 + $1.positive }) * share)
        }
        let samples = labelled.map { subsample($0, stream: &stream) }
        guard samples.contains(where: { !$0.boxes.isEmpty }) else {
            return (Losses(classification: 0, boxRegression: 0, mask: 0), TrainingContext(box: nil, mask: nil))
        }
        let (boxFeatures, boxPool) = boxPooler.forward(features: features, boxes: samples.map(\.boxes))
        let trace = boxHead.forward(boxFeatures, params)
        let gtClasses = samples.flatMap(\.classes)
        var targetDeltas: [Float] = []
        for (b, s) in samples.enumerated() {
            for i in s.boxes.indices {
                guard s.classes[i] < config.classes else { targetDeltas += [0, 0, 0, 0]; continue }
                let d = boxTransform.deltas(from: s.boxes[i], to: truth[b].boxes[s.matched[i]])
                targetDeltas += [d.0, d.1, d.2, d.3]
            }
        }
        let dScores = Tensor(trace.scores.output.shape), dDeltas = Tensor(trace.deltas.output.shape)
        let (cls, box) = BoxHead.losses(scores: trace.scores.output, deltas: trace.deltas.output, gtClasses: gtClasses,
                                        targetDeltas: targetDeltas, dScores: dScores, dDeltas: dDeltas,
                                        normalizer: normalizers?.rows)
        // The mask head sees each image's foreground proposals (detectron2's select_foreground_proposals).
        var fgBoxes: [[Box]] = [], fgClasses: [Int] = [], fgTargets: [Float] = []
        for (b, s) in samples.enumerated() {
            let fg = s.boxes.indices.filter { s.classes[$0] >= 0 && s.classes[$0] < config.classes }
            let boxes = fg.map { s.boxes[$0] }
            fgBoxes.append(boxes)
            fgClasses += fg.map { s.classes[$0] }
            let t = truth[b]
            fgTargets += maskTargets(masks: t.masks, height: t.maskHeight, width: t.maskWidth, boxes: boxes,
                                     instances: fg.map { s.matched[$0] }, size: 2 * config.maskPooled).array
        }
        var maskLoss: Float = 0
        var mask: (RoIPooler.Context, LayerTrace, Tensor)?
        if !fgClasses.isEmpty {
            let (maskFeatures, pool) = maskPooler.forward(features: features, boxes: fgBoxes)
            let mt = maskHead.forward(maskFeatures, params)
            let d = Tensor(mt.output.shape)
            maskLoss = MaskHead.loss(logits: mt.output, classes: fgClasses, targets: fgTargets, dLogits: d,
                                     normalizer: normalizers?.foreground)
            mask = (pool, mt, d)
        }
        return (Losses(classification: cls, boxRegression: box, mask: maskLoss),
                TrainingContext(box: (boxPool, trace, dScores, dDeltas), mask: mask))
    }

    /// Backward of the sum of the three losses: accumulates the heads' parameter gradients and the
    /// pooled levels' gradients into `dFeatures` (shaped as the forward's `features`).
    public func backward(_ context: TrainingContext, dFeatures: [FeatureMap], _ params: ParameterStore) {
        if let box = context.box {
            let dBoxFeatures = Tensor(box.trace.body.input.shape)
            boxHead.backward(box.trace, dScores: box.dScores, dDeltas: box.dDeltas, dFeatures: dBoxFeatures, params)
            boxPooler.backward(dFeatures: dFeatures, dOut: dBoxFeatures, context: box.pool)
        }
        if let mask = context.mask {
            let dMaskFeatures = Tensor(mask.trace.input.shape)
            maskHead.backward(mask.trace, dLogits: mask.dLogits, dFeatures: dMaskFeatures, params)
            maskPooler.backward(dFeatures: dFeatures, dOut: dMaskFeatures, context: mask.pool)
        }
    }

    /// Inference over a batch: `proposals[b]` image b's proposals, `imageSizes[b]` its (height, width)
    /// extent in the input. detectron2's `fast_rcnn_inference` then `mask_rcnn_inference`.
    public func inference(features: [FeatureMap], proposals: [[Box]], imageSizes: [(height: Int, width: Int)],
                          _ params: ParameterStore) -> [Detections] {
        precondition(proposals.count == imageSizes.count, "\(proposals.count) proposal lists for \(imageSizes.count) images")
        let k = config.classes, side = 2 * config.maskPooled
        guard proposals.contains(where: { !$0.isEmpty }) else {
            return proposals.map { _ in Detections(boxes: [], scores: [], classes: [], maskProbabilities: Tensor([0, side, side])) }
        }
        let (boxFeatures, _) = boxPooler.forward(features: features, boxes: proposals)
        let trace = boxHead.forward(boxFeatures, params)
        let scores = trace.scores.output, deltas = trace.deltas.output
        let probs = Tensor(scores.shape)
        softmaxForward(out: probs.data, input: scores.data, rows: scores.shape[0], width: k + 1)
        var results: [Detections] = []
        var row = 0
        for (b, list) in proposals.enumerated() {
            let (h, w) = imageSizes[b]
            var boxes: [Box] = [], values: [Float] = [], classes: [Int] = []
            for proposal in list {
                defer { row += 1 }
                let p = probs.data + row * (k + 1), d = deltas.data + row * 4 * k
                let predicted = (0..<k).map { c in boxTransform.apply((d[4 * c], d[4 * c + 1], d[4 * c + 2], d[4 * c + 3]), to: proposal) }
                // detectron2 drops a proposal whose boxes or scores are not all finite.
                guard predicted.allSatisfy(\.isFinite), (0...k).allSatisfy({ p[$0].isFinite }) else { continue }
                for c in 0..<k where p[c] > scoreThreshold {
                    boxes.append(predicted[c].clipped(height: h, width: w))
                    values.append(p[c])
                    classes.append(c)
                }
            }
            let keep = Array(batchedNonMaximumSuppression(boxes: boxes, scores: values, groups: classes,
                                                          threshold: nmsThreshold).prefix(detectionsPerImage))
            results.append(Detections(boxes: keep.map { boxes[$0] }, scores: keep.map { values[$0] },
                                      classes: keep.map { classes[$0] }, maskProbabilities: Tensor([keep.count, side, side])))
        }
        let kept = results.map(\.boxes)
        guard kept.contains(where: { !$0.isEmpty }) else { return results }
        let (maskFeatures, _) = maskPooler.forward(features: features, boxes: kept)
        let logits = maskHead.forward(maskFeatures, params).output
        let plane = side * side
        var r = 0
        for b in results.indices {
            for (n, c) in results[b].classes.enumerated() {
                let src = logits.data + (r * k + c) * plane, dst = results[b].maskProbabilities.data + n * plane
                for p in 0..<plane { dst[p] = 1 / (1 + expf(-src[p])) }
                r += 1
            }
        }
        return results
    }

    /// detectron2's `detector_postprocess`: boxes scaled from the input extent (`inputHeight` x
    /// `inputWidth`) to the original size, clipped, empty ones dropped, masks pasted at the original
    /// size and binarised at 0.5.
    public static func postprocess(_ d: Detections, inputHeight: Int, inputWidth: Int, originalHeight: Int,
                                   originalWidth: Int) -> ImageDetections {
        let sx = Float(originalWidth) / Float(inputWidth), sy = Float(originalHeight) / Float(inputHeight)
        let boxes = d.boxes.map { Box($0.x0 * sx, $0.y0 * sy, $0.x1 * sx, $0.y1 * sy).clipped(height: originalHeight, width: originalWidth) }
        let keep = boxes.indices.filter { boxes[$0].isNonEmpty() }
        let side = d.maskProbabilities.shape.count == 3 ? d.maskProbabilities.shape[1] : 0
        let probs = Tensor([keep.count, side, side])
        for (n, i) in keep.enumerated() {
            (probs.data + n * side * side).update(from: d.maskProbabilities.data + i * side * side, count: side * side)
        }
        let masks = keep.isEmpty ? [] : pasteMasks(probabilities: probs, boxes: keep.map { boxes[$0] },
                                                   imageHeight: originalHeight, imageWidth: originalWidth)
        return ImageDetections(boxes: keep.map { boxes[$0] }, scores: keep.map { d.scores[$0] },
                               classes: keep.map { d.classes[$0] }, masks: masks)
    }
}
