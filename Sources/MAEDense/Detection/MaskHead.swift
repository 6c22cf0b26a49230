import Foundation
import MAEKernels
import MAEModels

/// detectron2's `MaskRCNNConvUpsampleHead` as ViTDet configures it: `roi_heads.mask_head.mask_fcn{1..4}`
/// 3x3 convs without bias + LN (`.mask_fcn{k}.norm.*`) + ReLU, `roi_heads.mask_head.deconv` (ConvTranspose
/// k2 s2, with bias) + ReLU, `roi_heads.mask_head.predictor` (1x1 conv to K class-specific mask logits).
/// Init as detectron2: convs and deconv c2_msra_fill, predictor normal(0.001), biases 0.
///
/// features (R, C, M, M) pooled RoIs -> logits (R, K, 2M, 2M).
public struct MaskHead {
    public let config: ROIHeadConfig
    public let body: LayerChain

    public init(_ config: ROIHeadConfig, in layout: inout ParameterLayout) {
        self.config = config
        var layers: [any DenseLayer] = []
        var channels = config.inChannels
        for k in 0..<config.maskConvs {
            layers.append(ConvNormAct.detectron2("roi_heads.mask_head.mask_fcn\(k + 1)", in: &layout, inChannels: channels,
                                                 outChannels: config.convDim, kernel: 3, padding: 1, norm: .layerNorm,
                                                 activation: .relu, weightInit: .msra))
            channels = config.convDim
        }
        layers.append(ConvTranspose2dLayer("roi_heads.mask_head.deconv", in: &layout, inChannels: channels,
                                           outChannels: config.convDim, weightInit: .msra))
        layers.append(ReLU())
        layers.append(Conv2dLayer("roi_heads.mask_head.predictor", in: &layout, inChannels: config.convDim,
                                  outChannels: config.classes, kernel: 1, weightInit: .normal(std: 0.001)))
        body = LayerChain(layers)
    }

    /// features (R, C, M, M) -> trace whose output is the (R, K, 2M, 2M) mask logits.
    public func forward(_ features: Tensor, _ params: ParameterStore) -> LayerTrace {
        body.forward(features, params, training: false)
    }

    /// Accumulates the parameters' gradients; adds the features' gradient into `dFeatures` when given.
    public func backward(_ trace: LayerTrace, dLogits: Tensor, dFeatures: Tensor?, _ params: ParameterStore) {
        body.backward(trace, dOut: dLogits, dInput: dFeatures, params)
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        body.initialize(params, rng: &rng)
    }

    /// detectron2's `mask_rcnn_loss`: binary cross-entropy with logits, mean over the S x S pixels of
    /// each foreground RoI's gt-class channel. Writes dLogits (zero off those channels) for a unit
    /// upstream gradient; no foreground RoIs give 0 (detectron2's `pred_mask_logits.sum() * 0`).
    ///
    /// logits (R, K, S, S), classes R in 0..<K, targets (R, S, S) of 0/1. `normalizer` replaces R
    /// in the mean (data parallelism: the global batch's foreground RoIs times the rank's share).
    public static func loss(logits: Tensor, classes: [Int], targets: [Float], dLogits: Tensor, normalizer: Double? = nil) -> Float {
        dLogits.zero()
        let rows = classes.count
        guard rows > 0 else { return 0 }
        precondition(logits.shape.count == 4 && logits.shape[0] == rows, "mask loss: \(rows) classes for logits \(logits.shape)")
        let k = logits.shape[1], plane = logits.shape[2] * logits.shape[3]
        precondition(targets.count == rows * plane, "mask loss: targets are not (R, S, S)")
        let pixels = normalizer.map { $0 * Double(plane) } ?? Double(rows * plane)
        let scale = 1 / Float(pixels)
        var total: Double = 0
        for (r, c) in classes.enumerated() {
            precondition(c >= 0 && c < k, "mask class \(c) outside 0..<\(k)")
            let x = logits.data + (r * k + c) * plane, g = dLogits.data + (r * k + c) * plane
            for p in 0..<plane {
                let v = x[p], t = targets[r * plane + p]
                // max(x, 0) - x t + log(1 + exp(-|x|)), torch's stable form.
                total += Double(max(v, 0) - v * t + log1p(exp(-abs(v))))
                g[p] = (1 / (1 + exp(-v)) - t) * scale
            }
        }
        return Float(total / pixels)
    }
}
