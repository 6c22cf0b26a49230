import MAEKernels
import MAEModels

// detectron2's region proposal network as ViTDet configures it: `StandardRPNHead` with
// conv_dims [-1, -1] on p2..p6, and `RPN` (anchor matching, sampling, losses, proposals).

/// detectron2 `StandardRPNHead`: per level, 3x3 convs (ReLU after each, with bias, no norm; one per
/// `convDims` entry, -1 = keep the width), then a 1x1 conv to A objectness logits and a 1x1 conv to
/// 4A anchor deltas. Every conv is initialised normal(std 0.01), bias 0.
///
/// Parameter names (detectron2's): `<prefix>.conv.weight/bias` for one hidden conv, else
/// `<prefix>.conv.conv0.*`, `<prefix>.conv.conv1.*`, ...; `<prefix>.objectness_logits.*`,
/// `<prefix>.anchor_deltas.*`. ViTDet: prefix `proposal_generator.rpn_head`, 256 channels, A = 3.
public struct RPNHead {
    public let hidden: LayerChain
    public let objectness: Conv2dLayer
    public let deltas: Conv2dLayer
    public let channels: Int
    public let anchorsPerLocation: Int

    public init(_ prefix: String, in layout: inout ParameterLayout, channels: Int, anchorsPerLocation: Int,
                convDims: [Int] = [-1, -1]) {
        precondition(!convDims.isEmpty && channels > 0 && anchorsPerLocation > 0, "RPN head of \(convDims) on \(channels) channels")
        let init001 = WeightInit.normal(std: 0.01)
        var layers: [any DenseLayer] = [], width = channels
        for (k, dim) in convDims.enumerated() {
            let out = dim == -1 ? width : dim
            precondition(out > 0, "Conv output channels should be greater than 0. Got \(out)")
            let name = convDims.count == 1 ? "\(prefix).conv" : "\(prefix).conv.conv\(k)"
            layers.append(Conv2dLayer(name, in: &layout, inChannels: width, outChannels: out, kernel: 3, padding: 1,
                                      bias: true, weightInit: init001))
            layers.append(ReLU())
            width = out
        }
        hidden = LayerChain(layers)
        objectness = Conv2dLayer("\(prefix).objectness_logits", in: &layout, inChannels: width,
                                 outChannels: anchorsPerLocation, kernel: 1, weightInit: init001)
        deltas = Conv2dLayer("\(prefix).anchor_deltas", in: &layout, inChannels: width,
                             outChannels: 4 * anchorsPerLocation, kernel: 1, weightInit: init001)
        self.channels = channels
        self.anchorsPerLocation = anchorsPerLocation
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        hidden.initialize(params, rng: &rng)
        objectness.initialize(params, rng: &rng)
        deltas.initialize(params, rng: &rng)
    }
}

/// One image's size before padding, (height, width) in input pixels: proposals are clipped to it.
public typealias ImageSize = (height: Int, width: Int)

/// What `RPN.forward` returns.
public struct RPNOutput {
    /// Per image, at most `postNMSTopK` proposals with their objectness logits, best first. No
    /// gradient flows through them (detectron2 decodes them under no_grad).
    public let proposals: [Proposals]
    /// "loss_rpn_cls" and "loss_rpn_loc" when ground truth was given, else empty.
    public let losses: [String: Float]
    /// Anchors sampled as foreground / background, summed over the batch (detectron2 logs them per image).
    public let sampledPositives: Int
    public let sampledNegatives: Int
    /// For `RPN.backward`.
    public let context: RPNContext
}

/// The RPN forward's traces and the losses' gradients with respect to the head outputs.
public struct RPNContext {
    let hidden: [LayerTrace]
    let objectness: [LayerTrace]
    let deltas: [LayerTrace]
    /// d(loss_rpn_cls + loss_rpn_loc) / d outputs, per level: (B, A, H, W) and (B, 4A, H, W).
    let dObjectness: [Tensor]
    let dDeltas: [Tensor]
}

/// detectron2 `RPN` over a feature pyramid, ViTDet's Mask R-CNN settings by default.
///
/// Use (the Mask R-CNN assembler):
///
///     var layout = ParameterLayout()
///     let rpn = RPN(in: &layout)                 // names under proposal_generator.rpn_head
///     ... params = ParameterStore(layout: layout); rpn.initialize(params, rng: &rng)
///     let out = try rpn.forward(features: [p2, p3, p4, p5, p6], imageSizes: sizes, gtBoxes: boxes,
///                               params: params, training: true, stream: &stream)
///     // out.proposals[b]: image b's proposals (boxes, logits, levels), best first
///     // out.losses["loss_rpn_cls"], out.losses["loss_rpn_loc"]: added to the total loss as they are
///     rpn.backward(out.context, params: params, featureGradients: [dp2, dp3, dp4, dp5, dp6])
///
/// `forward`:
/// - `features`: the pyramid levels (B, C, H, W) with the anchor generator's strides, in order.
/// - `imageSizes`: each image's size before padding (`ImageList.image_sizes`).
/// - `gtBoxes`: per image its ground-truth boxes (crowd boxes already dropped); required when
///   `training`, and when given the losses are computed (also at inference, for validation losses).
/// - `training`: selects the proposal top-k (2000 per level in training, 1000 at test; 1000 per
///   image after NMS 0.7 in both) and makes non-finite proposals an error.
/// - `stream`: draws the anchor sample of each image in turn (see `subsampleLabels`).
/// - `global`: under data parallelism, the batch's place in the global batch: the draws of the
///   images before it are replayed first, so each image samples what one process samples (the
///   normaliser 256 N, weighted by the rank's share N / N_global, is already the global one).
///
/// Training targets and losses, as detectron2: anchors of all levels, ordered (level, y, x, anchor),
/// matched to the ground truth by IoU (`Matcher.rpn`: < 0.3 background, [0.3, 0.7) ignored, >= 0.7
/// foreground, plus each box's best anchors); `batchSizePerImage` (256) anchors sampled at
/// `positiveFraction` (0.5); loss_rpn_cls = BCE-with-logits summed over sampled anchors / (256 N);
/// loss_rpn_loc = L1 (smooth_l1 with beta 0) between predicted and `get_deltas(anchor, gt)` deltas,
/// summed over sampled foreground anchors / (256 N), N the batch size. Both loss weights are 1.
/// Predicted deltas are laid out as detectron2's head: channel a * 4 + k of the deltas conv is
/// coordinate k of anchor a.
///
/// `backward(context, params:, featureGradients:)` takes d(total loss)/d(each RPN loss) = 1 (the
/// losses are added unweighted), accumulates the head's parameter gradients into `params.grads`
/// and the feature gradients into `featureGradients` (one (B, C, H, W) map per level). It needs
/// a forward that computed losses.
public struct RPN {
    public let head: RPNHead
    public let anchorGenerator: AnchorGenerator
    public var matcher: Matcher = .rpn
    public var boxTransform = BoxTransform(weights: (1, 1, 1, 1))
    public var batchSizePerImage = 256
    public var positiveFraction = 0.5
    public var trainingSelection = ProposalSelection.training
    public var inferenceSelection = ProposalSelection.inference

    /// An RPN whose head's parameters are registered under `<prefix>.rpn_head` in `layout`.
    public init(prefix: String = "proposal_generator", in layout: inout ParameterLayout, channels: Int = 256,
                anchors: AnchorGenerator = .vitDet, convDims: [Int] = [-1, -1]) {
        let perLocation = anchors.anchorsPerLocation(level: 0)
        precondition(anchors.strides.indices.allSatisfy { anchors.anchorsPerLocation(level: $0) == perLocation },
                     "Each level must have the same number of anchors per spatial position")
        head = RPNHead(prefix.isEmpty ? "rpn_head" : "\(prefix).rpn_head", in: &layout, channels: channels,
                       anchorsPerLocation: perLocation, convDims: convDims)
        anchorGenerator = anchors
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) { head.initialize(params, rng: &rng) }

    /// See the type's documentation.
    public func forward(features: [FeatureMap], imageSizes: [ImageSize], gtBoxes: [[Box]]?, params: ParameterStore,
                        training: Bool, stream: inout RandomStream, global: GlobalBatch? = nil) throws -> RPNOutput {
        precondition(features.map(\.stride) == anchorGenerator.strides,
                     "RPN anchors for strides \(anchorGenerator.strides) got maps of strides \(features.map(\.stride))")
        precondition(features.allSatisfy { $0.channels == head.channels && $0.batch == features[0].batch },
                     "RPN maps must share the batch and have \(head.channels) channels")
        let batch = features[0].batch
        precondition(imageSizes.count == batch, "\(imageSizes.count) image sizes for a batch of \(batch)")
        precondition(!training || gtBoxes != nil, "RPN requires ground-truth boxes in training")
        precondition(gtBoxes == nil || gtBoxes!.count == batch, "ground truth for \(gtBoxes!.count) images, batch \(batch)")

        var hidden: [LayerTrace] = [], objectness: [LayerTrace] = [], deltas: [LayerTrace] = []
        for f in features {
            let t = head.hidden.forward(f.tensor, params, training: training)
            hidden.append(t)
            objectness.append(head.objectness.forward(t.output, params, training: training))
            deltas.append(head.deltas.forward(t.output, params, training: training))
        }
        let layout = AnchorLayout(features: features, perLocation: head.anchorsPerLocation)
        let anchors = anchorGenerator.anchors(gridSizes: features.map { ($0.height, $0.width) })
        let selection = training ? trainingSelection : inferenceSelection

        var proposals: [Proposals] = []
        for b in 0..<batch {
            var boxes: [[Box]] = [], logits: [[Float]] = []
            for l in features.indices {
                let n = anchors[l].count
                logits.append((0..<n).map { objectness[l].output.data[layout.logitOffset(level: l, image: b, anchor: $0)] })
                let d = (0..<(4 * n)).map { deltas[l].output.data[layout.deltaOffset(level: l, image: b, anchor: $0 / 4, coordinate: $0 % 4)] }
                boxes.append(d.withUnsafeBufferPointer { boxTransform.apply(deltas: $0.baseAddress!, to: anchors[l]) })
            }
            proposals.append(try selectProposals(boxes: boxes, logits: logits, imageHeight: imageSizes[b].height,
                                                 imageWidth: imageSizes[b].width, selection: selection, training: training))
        }

        var losses: [String: Float] = [:], positives = 0, negatives = 0
        var dObjectness: [Tensor] = [], dDeltas: [Tensor] = []
        if let gtBoxes {
            dObjectness = objectness.map { Tensor($0.output.shape) }
            dDeltas = deltas.map { Tensor($0.output.shape) }
            let all = anchors.flatMap { $0 }
            // Per level: the sampled anchors' offsets in the head outputs and their targets.
            var clsAt = [[Int]](repeating: [], count: features.count), clsTarget = [[Float]](repeating: [], count: features.count)
            var locAt = clsAt, locTarget = clsTarget
            let matched = (0..<batch).map { b in
                matcher(quality: pairwiseIoU(gtBoxes[b], all), groundTruths: gtBoxes[b].count, predictions: all.count)
            }
            if let global {
                global.skipEarlierImages(global.candidates(matched.map { subsampleCandidates($0.labels.map(Int.init), backgroundLabel: 0) }),
                                         stream: &stream)
            }
            for b in 0..<batch {
                let gt = gtBoxes[b]
                let (matches, labels) = matched[b]
                let (pos, neg) = subsampleLabels(labels.map(Int.init), numSamples: batchSizePerImage,
                                                 positiveFraction: positiveFraction, backgroundLabel: 0, stream: &stream)
                positives += pos.count; negatives += neg.count
                for (anchor, target) in pos.map({ ($0, Float(1)) }) + neg.map({ ($0, Float(0)) }) {
                    let (l, i) = layout.split(anchor)
                    clsAt[l].append(layout.logitOffset(level: l, image: b, anchor: i)); clsTarget[l].append(target)
                }
                for anchor in pos {
                    let (l, i) = layout.split(anchor)
                    let t = boxTransform.deltas(from: all[anchor], to: gt[matches[anchor]])
                    locAt[l] += (0..<4).map { layout.deltaOffset(level: l, image: b, anchor: i, coordinate: $0) }
                    locTarget[l] += [t.0, t.1, t.2, t.3]
                }
            }
            let scale = 1 / Float(batchSizePerImage * batch)
            var clsSum = 0.0, locSum = 0.0
            for l in features.indices {
                clsSum += binaryCrossEntropyWithLogitsSum(logits: objectness[l].output.data, indices: clsAt[l], targets: clsTarget[l],
                                                          dLogits: dObjectness[l].data, gradientScale: scale)
                locSum += l1LossSum(predictions: deltas[l].output.data, indices: locAt[l], targets: locTarget[l],
                                    dPredictions: dDeltas[l].data, gradientScale: scale)
            }
            losses = ["loss_rpn_cls": Float(clsSum) * scale, "loss_rpn_loc": Float(locSum) * scale]
        }
        let context = RPNContext(hidden: hidden, objectness: objectness, deltas: deltas, dObjectness: dObjectness, dDeltas: dDeltas)
        return RPNOutput(proposals: proposals, losses: losses, sampledPositives: positives, sampledNegatives: negatives,
                         context: context)
    }

    /// See the type's documentation.
    public func backward(_ context: RPNContext, params: ParameterStore, featureGradients: [FeatureMap]) {
        precondition(!context.dObjectness.isEmpty, "RPN backward needs a forward that computed losses")
        precondition(featureGradients.count == context.hidden.count, "\(featureGradients.count) feature gradients for \(context.hidden.count) levels")
        for l in context.hidden.indices {
            precondition(featureGradients[l].tensor.shape == context.hidden[l].input.shape, "level \(l) gradient shape")
            let dHidden = Tensor(context.hidden[l].output.shape)
            head.objectness.backward(context.objectness[l], dOut: context.dObjectness[l], dInput: dHidden, params)
            head.deltas.backward(context.deltas[l], dOut: context.dDeltas[l], dInput: dHidden, params)
            head.hidden.backward(context.hidden[l], dOut: dHidden, dInput: featureGradients[l].tensor, params)
        }
    }
}

/// Where anchor r of the (level, y, x, anchor) concatenation lives in the head's (B, A, H, W)
/// logits and (B, 4A, H, W) deltas (detectron2's permute(0, 2, 3, 1) and view(N, A, 4, H, W)).
struct AnchorLayout {
    let heights: [Int], widths: [Int], perLocation: Int
    /// First concatenated index of each level.
    let starts: [Int]

    init(features: [FeatureMap], perLocation: Int) {
        heights = features.map(\.height); widths = features.map(\.width); self.perLocation = perLocation
        var s: [Int] = [], total = 0
        for f in features { s.append(total); total += f.height * f.width * perLocation }
        starts = s
    }

    /// (level, index within the level) of concatenated anchor `r`.
    func split(_ r: Int) -> (Int, Int) {
        var l = starts.count - 1
        while starts[l] > r { l -= 1 }
        return (l, r - starts[l])
    }

    func logitOffset(level l: Int, image b: Int, anchor i: Int) -> Int {
        let a = i % perLocation, cell = i / perLocation, plane = heights[l] * widths[l]
        return (b * perLocation + a) * plane + cell
    }

    func deltaOffset(level l: Int, image b: Int, anchor i: Int, coordinate k: Int) -> Int {
        let a = i % perLocation, cell = i / perLocation, plane = heights[l] * widths[l]
        return (b * 4 * perLocation + 4 * a + k) * plane + cell
    }
}
