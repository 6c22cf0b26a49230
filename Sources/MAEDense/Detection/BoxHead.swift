import Foundation
import MAEKernels
import MAEModels

/// The sizes of Mask R-CNN's RoI heads; `.vitDet(classes:)` is ViTDet's COCO config
/// (`mask_rcnn_vitdet.py` over `mask_rcnn_fpn.py`).
public struct ROIHeadConfig: Codable, Sendable, Equatable {
    /// Foreground classes K (background is logit K).
    public var classes: Int
    /// Channels of the pyramid levels the poolers read.
    public var inChannels: Int
    /// Box pooler output side (7) and mask pooler output side (14; the mask head doubles it to 28).
    public var boxPooled: Int, maskPooled: Int
    /// Box head: `boxConvs` 3x3 convs of `convDim` with LN + ReLU, then one FC of `fcDim` + ReLU.
    public var boxConvs: Int, convDim: Int, fcDim: Int
    /// Mask head: `maskConvs` 3x3 convs of `convDim` with LN + ReLU, deconv + ReLU, 1x1 predictor.
    public var maskConvs: Int

    public init(classes: Int, inChannels: Int = 256, boxPooled: Int = 7, maskPooled: Int = 14, boxConvs: Int = 4,
                convDim: Int = 256, fcDim: Int = 1024, maskConvs: Int = 4) {
        self.classes = classes; self.inChannels = inChannels; self.boxPooled = boxPooled; self.maskPooled = maskPooled
        self.boxConvs = boxConvs; self.convDim = convDim; self.fcDim = fcDim; self.maskConvs = maskConvs
    }

    /// ViTDet's COCO heads: 256 channels, 4conv1fc box head (FC 1024), 4-conv mask head, 7 / 14 pooling.
    public static func vitDet(classes: Int) -> ROIHeadConfig { ROIHeadConfig(classes: classes) }
}

/// detectron2's box head and predictor as ViTDet configures them: `FastRCNNConvFCHead` "4conv1fc" with
/// LN (`roi_heads.box_head.conv{1..4}.weight` without bias, `.conv{k}.norm.{weight,bias}`, then
/// `roi_heads.box_head.fc1.{weight,bias}` + ReLU) and `FastRCNNOutputLayers`
/// (`roi_heads.box_predictor.cls_score` K+1 logits, background last; `roi_heads.box_predictor.bbox_pred`
/// 4K class-specific deltas). Init as detectron2: convs c2_msra_fill, fc c2_xavier_fill, cls_score
/// normal(0.01), bbox_pred normal(0.001), biases 0.
///
/// features (R, C, P, P) pooled RoIs -> scores (R, K+1), deltas (R, 4K).
public struct BoxHead {
    public let config: ROIHeadConfig
    /// The convs and the FC + ReLU, as one chain (the FC flattens (R, C, P, P) to (R, C P P)).
    public let body: LayerChain
    public let clsScore: LinearLayer
    public let bboxPred: LinearLayer

    public init(_ config: ROIHeadConfig, in layout: inout ParameterLayout) {
        self.config = config
        var layers: [any DenseLayer] = []
        var channels = config.inChannels
        for k in 0..<config.boxConvs {
            layers.append(ConvNormAct.detectron2("roi_heads.box_head.conv\(k + 1)", in: &layout, inChannels: channels,
                                                 outChannels: config.convDim, kernel: 3, padding: 1, norm: .layerNorm,
                                                 activation: .relu, weightInit: .msra))
            channels = config.convDim
        }
        layers.append(LinearLayer("roi_heads.box_head.fc1", in: &layout,
                                  inFeatures: channels * config.boxPooled * config.boxPooled,
                                  outFeatures: config.fcDim, weightInit: .xavier))
        layers.append(ReLU())
        body = LayerChain(layers)
        clsScore = LinearLayer("roi_heads.box_predictor.cls_score", in: &layout, inFeatures: config.fcDim,
                               outFeatures: config.classes + 1, weightInit: .normal(std: 0.01))
        bboxPred = LinearLayer("roi_heads.box_predictor.bbox_pred", in: &layout, inFeatures: config.fcDim,
                               outFeatures: 4 * config.classes, weightInit: .normal(std: 0.001))
    }

    /// What the backward needs; `scores.output` is (R, K+1), `deltas.output` (R, 4K).
    public struct Trace {
        public let body: LayerTrace, scores: LayerTrace, deltas: LayerTrace
    }

    /// features (R, C, P, P) -> trace with scores (R, K+1) and deltas (R, 4K).
    public func forward(_ features: Tensor, _ params: ParameterStore) -> Trace {
        let hidden = body.forward(features, params, training: false)
        return Trace(body: hidden, scores: clsScore.forward(hidden.output, params, training: false),
                     deltas: bboxPred.forward(hidden.output, params, training: false))
    }

    /// Accumulates the parameters' gradients; adds the features' gradient into `dFeatures` when given.
    public func backward(_ trace: Trace, dScores: Tensor, dDeltas: Tensor, dFeatures: Tensor?, _ params: ParameterStore) {
        let dHidden = Tensor(trace.body.output.shape)
        clsScore.backward(trace.scores, dOut: dScores, dInput: dHidden, params)
        bboxPred.backward(trace.deltas, dOut: dDeltas, dInput: dHidden, params)
        body.backward(trace.body, dOut: dHidden, dInput: dFeatures, params)
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        body.initialize(params, rng: &rng)
        clsScore.initialize(params, rng: &rng)
        bboxPred.initialize(params, rng: &rng)
    }

    /// detectron2's `FastRCNNOutputLayers.losses` on R sampled proposals: `loss_cls` = cross-entropy mean
    /// over R (gt class K is background); `loss_box_reg` = L1 (smooth-L1 with beta 0) between the gt
    /// class's 4 deltas and `targetDeltas` over the foreground rows, summed and divided by R (every
    /// sampled proposal, not the foreground count). Writes dScores (R, K+1) and dDeltas (R, 4K) for
    /// a unit upstream gradient on each loss. Zero proposals give zero losses.
    ///
    /// scores (R, K+1), deltas (R, 4K), gtClasses R in 0...K, targetDeltas (R, 4) (read on foreground rows).
    /// `normalizer` divides both sums instead of R (data parallelism: the global batch's RoIs times
    /// the rank's share).
    public static func losses(scores: Tensor, deltas: Tensor, gtClasses: [Int], targetDeltas: [Float],
                              dScores: Tensor, dDeltas: Tensor,
                              normalizer: Double? = nil) -> (classification: Float, boxRegression: Float) {
        let rows = gtClasses.count, width = scores.shape.last ?? 0, k = width - 1
        precondition(scores.count == rows * width && deltas.count == rows * 4 * k && targetDeltas.count == rows * 4,
                     "box losses: \(rows) classes for scores \(scores.shape), deltas \(deltas.shape)")
        dScores.zero()
        dDeltas.zero()
        guard rows > 0 else { return (0, 0) }
        var targets = [Float](repeating: 0, count: rows * width)
        for (r, c) in gtClasses.enumerated() {
            precondition(c >= 0 && c <= k, "gt class \(c) outside 0...\(k)")
            targets[r * width + c] = 1
        }
        let probs = Tensor(scores.shape)
        var classification = targets.withUnsafeBufferPointer { t -> Float in
            let loss = crossEntropyForward(probs: probs.data, logits: scores.data, targets: t.baseAddress!, rows: rows, classes: width)
            crossEntropyBackward(dLogits: dScores.data, probs: probs.data, targets: t.baseAddress!, rows: rows, classes: width)
            return loss
        }
        let divisor = normalizer ?? Double(rows)
        if let normalizer {
            // The kernels' mean over R, rescaled to the sum over `normalizer`.
            let f = Float(Double(rows) / normalizer)
            classification *= f
            for i in 0..<dScores.count { dScores[i] *= f }
        }
        var l1: Double = 0
        let scale = 1 / Float(divisor)
        for (r, c) in gtClasses.enumerated() where c < k {
            for j in 0..<4 {
                let at = r * 4 * k + 4 * c + j
                let d = deltas[at] - targetDeltas[4 * r + j]
                l1 += Double(abs(d))
                // torch's abs has gradient sign(d), 0 at 0.
                dDeltas[at] = d > 0 ? scale : (d < 0 ? -scale : 0)
            }
        }
        return (classification, Float(l1 / divisor))
    }
}
