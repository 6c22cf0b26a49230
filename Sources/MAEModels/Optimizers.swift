import Foundation
import MAEKernels

/// Per-parameter optimisation settings: learning-rate scale (layer-wise decay), weight decay on or off,
/// frozen or not. One entry per spec of the model's `ParameterLayout`.
public struct ParameterGroups: Sendable {
    public var lrScale: [Float]
    public var decay: [Bool]
    public var frozen: [Bool]

    /// MAE's rules: no weight decay on 1-D parameters (norms, biases) nor on names in `noDecay`
    /// (fine-tuning passes pos_embed, cls_token, dist_token; pretraining passes none); fixed tables
    /// (not trainable) are frozen; with `layerDecay`, scale = decay^(depth + 1 - layer_id).
    public init(layout: ParameterLayout, depth: Int, noDecay: Set<String> = [],
                layerDecay: Float? = nil, frozen isFrozen: (String) -> Bool = { _ in false }) {
        lrScale = layout.specs.map { spec in
            guard let layerDecay else { return 1 }
            let layers = depth + 1
            return Float(pow(Double(layerDecay), Double(layers - ParameterGroups.layerID(spec.name, depth: depth))))
        }
        decay = layout.specs.map { $0.shape.count > 1 && !$0.name.hasSuffix(".bias") && !noDecay.contains($0.name) }
        frozen = layout.specs.map { !$0.trainable || isFrozen($0.name) }
    }

    /// MAE's get_layer_id_for_vit: tokens and patch embedding 0, block i -> i + 1, the rest depth + 1.
    public static func layerID(_ name: String, depth: Int) -> Int {
        if ["cls_token", "pos_embed", "mask_token", "dist_token"].contains(name) { return 0 }
        if name.hasPrefix("patch_embed") { return 0 }
        if name.hasPrefix("blocks.") {
            let index = name.dropFirst("blocks.".count).prefix { $0.isNumber }
            return (Int(index) ?? 0) + 1
        }
        return depth + 1
    }
}

/// An optimiser updates a `ParameterStore` from its gradients.
public protocol Optimizer: AnyObject {
    /// One update with base learning rate `lr` (scaled per group).
    func step(_ params: ParameterStore, lr: Float)
    /// Optimiser state as named flat arrays, for checkpoints (resume).
    var state: [String: [Float]] { get set }
}

/// Runs `body(specIndex, spec)` for each parameter that is not frozen (every optimizer's update), then
/// marks the bf16 weight copies stale so the next product packs the new weights.
private func forEachTrainable(_ params: ParameterStore, _ groups: ParameterGroups,
                              _ body: (Int, ParameterSpec) -> Void) {
    for (i, spec) in params.specs.enumerated() where !groups.frozen[i] { body(i, spec) }
    params.weightsChanged()
}

/// AdamW as PyTorch's torch.optim.AdamW: decoupled weight decay p *= 1 - lr * wd, then the Adam
/// step with bias corrections, denominator sqrt(v) / sqrt(1 - b2^t) + eps.
public final class AdamW: Optimizer {
    public var groups: ParameterGroups
    public var beta1: Float, beta2: Float, eps: Float, weightDecay: Float
    public private(set) var steps = 0
    private var m: [Float], v: [Float]

    public init(count: Int, groups: ParameterGroups, beta1: Float = 0.9, beta2: Float = 0.999,
                eps: Float = 1e-8, weightDecay: Float = 0.05) {
        self.groups = groups
        self.beta1 = beta1; self.beta2 = beta2; self.eps = eps; self.weightDecay = weightDecay
        m = .init(repeating: 0, count: count)
        v = .init(repeating: 0, count: count)
    }

    public func step(_ params: ParameterStore, lr: Float) {
        steps += 1
        let bc1 = 1 - pow(beta1, Float(steps)), bc2 = 1 - pow(beta2, Float(steps))
        let p = params.values.data, g = params.grads.data
        m.withUnsafeMutableBufferPointer { mb in
            v.withUnsafeMutableBufferPointer { vb in
                forEachTrainable(params, groups) { i, spec in
                    let rate = lr * groups.lrScale[i]
                    let o = spec.offset
                    adamWUpdate(params: p + o, grads: g + o, expAvg: mb.baseAddress! + o, expAvgSq: vb.baseAddress! + o,
                                count: spec.count, shrink: 1 - rate * (groups.decay[i] ? weightDecay : 0),
                                stepSize: rate / bc1, beta1: beta1, beta2: beta2, sqrtBC2: bc2.squareRoot(), eps: eps)
                }
            }
        }
    }

    public var state: [String: [Float]] {
        get { ["exp_avg": m, "exp_avg_sq": v, "step": [Float(steps)]] }
        set {
            if let a = newValue["exp_avg"], a.count == m.count { m = a }
            if let a = newValue["exp_avg_sq"], a.count == v.count { v = a }
            if let s = newValue["step"]?.first { steps = Int(s) }
        }
    }
}

/// SGD with momentum as torch.optim.SGD (dampening 0, not Nesterov): g += wd * p; buf = mu buf + g; p -= lr buf.
public final class SGD: Optimizer {
    public var groups: ParameterGroups
    public var momentum: Float, weightDecay: Float
    private var buffer: [Float]

    public init(count: Int, groups: ParameterGroups, momentum: Float = 0.9, weightDecay: Float = 0) {
        self.groups = groups
        self.momentum = momentum
        self.weightDecay = weightDecay
        buffer = .init(repeating: 0, count: count)
    }

    public func step(_ params: ParameterStore, lr: Float) {
        let p = params.values.data, g = params.grads.data
        buffer.withUnsafeMutableBufferPointer { bb in
            let buf = bb.baseAddress!
            forEachTrainable(params, groups) { i, spec in
                let rate = lr * groups.lrScale[i], wd = groups.decay[i] ? weightDecay : 0
                for k in spec.offset..<(spec.offset + spec.count) {
                    buf[k] = momentum * buf[k] + g[k] + wd * p[k]
                    p[k] -= rate * buf[k]
                }
            }
        }
    }

    public var state: [String: [Float]] {
        get { ["momentum_buffer": buffer] }
        set { if let a = newValue["momentum_buffer"], a.count == buffer.count { buffer = a } }
    }
}

/// LARS as MAE's util/lars.py (from MoCo v3) for the linear probe: for parameters with more than one
/// dimension, dp = g + wd p scaled by trust * |p| / |dp| (when both norms are positive); then
/// mu = momentum mu + dp; p -= lr mu.
public final class LARS: Optimizer {
    public var groups: ParameterGroups
    public var momentum: Float, weightDecay: Float, trustCoefficient: Float
    private var mu: [Float]

    public init(count: Int, groups: ParameterGroups, momentum: Float = 0.9, weightDecay: Float = 0,
                trustCoefficient: Float = 0.001) {
        self.groups = groups
        self.momentum = momentum
        self.weightDecay = weightDecay
        self.trustCoefficient = trustCoefficient
        mu = .init(repeating: 0, count: count)
    }

    public func step(_ params: ParameterStore, lr: Float) {
        let p = params.values.data, g = params.grads.data
        mu.withUnsafeMutableBufferPointer { mb in
            let buf = mb.baseAddress!
            forEachTrainable(params, groups) { i, spec in
                let rate = lr * groups.lrScale[i]
                let range = spec.offset..<(spec.offset + spec.count)
                var q: Float = 1
                var wd: Float = 0
                if spec.shape.count > 1 {  // p.ndim > 1: not a norm parameter or bias
                    wd = weightDecay
                    var pn: Double = 0, un: Double = 0
                    for k in range {
                        let d = g[k] + wd * p[k]
                        pn += Double(p[k] * p[k]); un += Double(d * d)
                    }
                    if pn > 0 && un > 0 { q = trustCoefficient * Float(pn.squareRoot() / un.squareRoot()) }
                }
                for k in range {
                    buf[k] = momentum * buf[k] + (g[k] + wd * p[k]) * q
                    p[k] -= rate * buf[k]
                }
            }
        }
    }

    public var state: [String: [Float]] {
        get { ["mu": mu] }
        set { if let a = newValue["mu"], a.count == mu.count { mu = a } }
    }
}

/// MAE's adjust_learning_rate: linear warmup to `baseLR` over `warmupEpochs`, then half-cycle cosine
/// down to `minLR` at `epochs`. `epoch` is fractional (step / steps per epoch), as MAE updates per step.
public struct WarmupCosine: Codable, Sendable {
    public var baseLR: Float, minLR: Float, warmupEpochs: Double, epochs: Double

    public init(baseLR: Float, minLR: Float = 0, warmupEpochs: Double, epochs: Double) {
        self.baseLR = baseLR; self.minLR = minLR; self.warmupEpochs = warmupEpochs; self.epochs = epochs
    }

    public func lr(atEpoch epoch: Double) -> Float {
        if epoch < warmupEpochs { return baseLR * Float(epoch / warmupEpochs) }
        let progress = (epoch - warmupEpochs) / max(epochs - warmupEpochs, 1e-12)
        return minLR + (baseLR - minLR) * Float(0.5 * (1 + cos(Double.pi * min(progress, 1))))
    }
}

/// torch.nn.utils.clip_grad_norm_: scales every trainable gradient by maxNorm / (norm + 1e-6) when
/// the total L2 norm exceeds maxNorm. Returns the norm before clipping.
@discardableResult
public func clipGradNorm(_ params: ParameterStore, groups: ParameterGroups, maxNorm: Float) -> Float {
    let g = params.grads.data
    var total: Double = 0
    for (i, spec) in params.specs.enumerated() where !groups.frozen[i] {
        for k in spec.offset..<(spec.offset + spec.count) { total += Double(g[k] * g[k]) }
    }
    let norm = Float(total.squareRoot())
    let coef = maxNorm / (norm + 1e-6)
    if coef < 1 {
        for (i, spec) in params.specs.enumerated() where !groups.frozen[i] {
            for k in spec.offset..<(spec.offset + spec.count) { g[k] *= coef }
        }
    }
    return norm
}
