import MAEKernels
import MAEModels

/// mmcv's ConvModule as mmseg's heads build it: conv without bias + BatchNorm + ReLU, under
/// `prefix.conv.*` and `prefix.bn.*`; the conv initialised as mmcv's kaiming_init (normal, fan_out, relu).
func convModule(_ prefix: String, in layout: inout ParameterLayout, inChannels: Int, outChannels: Int,
                kernel: Int) -> LayerChain {
    ConvNormAct.mmcv(prefix, in: &layout, inChannels: inChannels, outChannels: outChannels, kernel: kernel,
                     padding: kernel / 2, norm: .batchNorm, activation: .relu, weightInit: .msra)
}

/// The 1x1 classifier every mmseg decode head ends with: Dropout2d(p) then `prefix.conv_seg`
/// (init normal std 0.01, bias 0).
struct SegClassifier {
    let conv: Conv2dLayer
    let dropout: Float

    init(_ prefix: String, in layout: inout ParameterLayout, channels: Int, classes: Int, dropout: Float) {
        conv = Conv2dLayer(prefix + ".conv_seg", in: &layout, inChannels: channels, outChannels: classes, kernel: 1,
                           weightInit: .normal(std: 0.01))
        self.dropout = dropout
    }

    struct Pass { let scale: [Float]?; let conv: LayerTrace }

    func forward(_ x: Tensor, _ params: ParameterStore, training: Bool, rng: inout RandomStream, shard: BatchShard?) -> Pass {
        guard training, dropout > 0 else { return Pass(scale: nil, conv: conv.forward(x, params, training: training)) }
        let (dropped, scale) = dropout2dForward(x, p: dropout, rng: &rng, shard: shard)
        return Pass(scale: scale, conv: conv.forward(dropped, params, training: training))
    }

    func backward(_ pass: Pass, dLogits: Tensor, _ params: ParameterStore) -> Tensor {
        let d = Tensor(pass.conv.input.shape)
        conv.backward(pass.conv, dOut: dLogits, dInput: d, params)
        return pass.scale.map { dropout2dBackward(d, scale: $0) } ?? d
    }
}

/// mmseg's UPerHead (decode_heads/uper_head.py) over four pyramid levels, `decode_head.*`:
/// PPM on the coarsest level (for each pool scale AdaptiveAvgPool + 1x1 ConvModule, bilinear back
/// up; `psp_modules.j.1`), concatenated with that level into the 3x3 `bottleneck`; 1x1
/// `lateral_convs` on the other levels; top-down bilinear adds; 3x3 `fpn_convs`; every level
/// resized to the finest and concatenated into the 3x3 `fpn_bottleneck`; Dropout2d(0.1) + 1x1
/// `conv_seg`. align_corners false throughout. Logits come at the finest level's size.
public struct UPerHead {
    public let inChannels, channels, classes: Int
    public let poolScales: [Int]
    let psp: [LayerChain]
    let bottleneck: LayerChain
    let laterals: [LayerChain]
    let fpn: [LayerChain]
    let fpnBottleneck: LayerChain
    let classifier: SegClassifier

    public init(_ prefix: String = "decode_head", in layout: inout ParameterLayout, inChannels: Int, channels: Int,
                classes: Int, poolScales: [Int] = [1, 2, 3, 6], dropout: Float = 0.1) {
        self.inChannels = inChannels; self.channels = channels; self.classes = classes; self.poolScales = poolScales
        // mmseg builds psp_modules, bottleneck, then lateral and fpn convs, fpn_bottleneck; conv_seg
        // comes first in BaseDecodeHead's __init__.
        classifier = SegClassifier(prefix, in: &layout, channels: channels, classes: classes, dropout: dropout)
        psp = poolScales.indices.map { j in
            convModule("\(prefix).psp_modules.\(j).1", in: &layout, inChannels: inChannels, outChannels: channels, kernel: 1)
        }
        bottleneck = convModule(prefix + ".bottleneck", in: &layout, inChannels: inChannels + poolScales.count * channels,
                                outChannels: channels, kernel: 3)
        laterals = (0..<3).map { i in
            convModule("\(prefix).lateral_convs.\(i)", in: &layout, inChannels: inChannels, outChannels: channels, kernel: 1)
        }
        fpn = (0..<3).map { i in
            convModule("\(prefix).fpn_convs.\(i)", in: &layout, inChannels: channels, outChannels: channels, kernel: 3)
        }
        fpnBottleneck = convModule(prefix + ".fpn_bottleneck", in: &layout, inChannels: 4 * channels,
                                   outChannels: channels, kernel: 3)
    }

    public struct Pass {
        let top: Tensor                       // the coarsest input (B, C, h3, w3)
        let pooled: [Tensor], psp: [LayerTrace]
        let bottleneck: LayerTrace
        let laterals: [LayerTrace]
        let summed: [Tensor]                  // the laterals after the top-down adds
        let fpn: [LayerTrace]
        let fpnBottleneck: LayerTrace
        let classifier: SegClassifier.Pass
        /// (B, K, h0, w0) at the finest level.
        public var logits: Tensor { classifier.conv.output }
    }

    /// levels: four (B, C, h_i, w_i) maps, finest first; `shard`: their rows of a global batch
    /// (Dropout2d draws for the whole batch).
    public func forward(_ levels: [Tensor], _ params: ParameterStore, training: Bool, rng: inout RandomStream,
                        shard: BatchShard? = nil) -> Pass {
        precondition(levels.count == 4, "UPerHead takes 4 levels, not \(levels.count)")
        let x = levels[3], b = x.shape[0], h3 = x.shape[2], w3 = x.shape[3]
        var pooled: [Tensor] = [], pspTraces: [LayerTrace] = [], pspOuts: [Tensor] = [x]
        for (j, s) in poolScales.enumerated() {
            let p = Tensor([b, inChannels, s, s])
            adaptiveAvgPool2dForward(out: p.data, input: x.data,
                                     size: Resample2dSize(batch: b, channels: inChannels, height: h3, width: w3, outHeight: s, outWidth: s))
            let t = psp[j].forward(p, params, training: training)
            pooled.append(p); pspTraces.append(t)
            pspOuts.append(resizeBilinear(t.output, height: h3, width: w3))
        }
        let bott = bottleneck.forward(concatChannels(pspOuts), params, training: training)
        let lat = (0..<3).map { laterals[$0].forward(levels[$0], params, training: training) }
        let summed = lat.map { $0.output.clone() } + [bott.output]
        for i in stride(from: 3, to: 0, by: -1) {
            addInPlace(summed[i - 1], resizeBilinear(summed[i], height: summed[i - 1].shape[2], width: summed[i - 1].shape[3]))
        }
        let fpnTraces = (0..<3).map { fpn[$0].forward(summed[$0], params, training: training) }
        let h0 = summed[0].shape[2], w0 = summed[0].shape[3]
        let outs = fpnTraces.map(\.output) + [summed[3]]
        let cat = concatChannels(outs.map { resizeBilinear($0, height: h0, width: w0) })
        let fb = fpnBottleneck.forward(cat, params, training: training)
        let cls = classifier.forward(fb.output, params, training: training, rng: &rng, shard: shard)
        return Pass(top: x, pooled: pooled, psp: pspTraces, bottleneck: bott, laterals: lat, summed: summed, fpn: fpnTraces,
                    fpnBottleneck: fb, classifier: cls)
    }

    /// Accumulates the parameter gradients; returns the gradient of each level.
    public func backward(_ pass: Pass, dLogits: Tensor, _ params: ParameterStore) -> [Tensor] {
        let dFeats = classifier.backward(pass.classifier, dLogits: dLogits, params)
        let dCat = Tensor(pass.fpnBottleneck.input.shape)
        fpnBottleneck.backward(pass.fpnBottleneck, dOut: dFeats, dInput: dCat, params)
        let dOuts = splitChannels(dCat, [channels, channels, channels, channels])
        let dSummed = pass.summed.map { Tensor($0.shape) }
        resizeBilinearBackward(dOuts[3], into: dSummed[3])
        for i in 0..<3 {
            let dFpnOut = Tensor(pass.fpn[i].output.shape)
            resizeBilinearBackward(dOuts[i], into: dFpnOut)
            fpn[i].backward(pass.fpn[i], dOut: dFpnOut, dInput: dSummed[i], params)
        }
        // The top-down adds in reverse: step i added up(summed[i]) into summed[i - 1].
        for i in 1...3 { resizeBilinearBackward(dSummed[i - 1], into: dSummed[i]) }
        var dLevels = (0..<3).map { i -> Tensor in
            let d = Tensor(pass.laterals[i].input.shape)
            laterals[i].backward(pass.laterals[i], dOut: dSummed[i], dInput: d, params)
            return d
        }
        let dPspCat = Tensor(pass.bottleneck.input.shape)
        bottleneck.backward(pass.bottleneck, dOut: dSummed[3], dInput: dPspCat, params)
        let dPsp = splitChannels(dPspCat, [inChannels] + poolScales.map { _ in channels })
        let dTop = dPsp[0]
        let x = pass.top, b = x.shape[0], h3 = x.shape[2], w3 = x.shape[3]
        for (j, s) in poolScales.enumerated() {
            let dOut = Tensor(pass.psp[j].output.shape)
            resizeBilinearBackward(dPsp[j + 1], into: dOut)
            let dPooled = Tensor(pass.pooled[j].shape)
            psp[j].backward(pass.psp[j], dOut: dOut, dInput: dPooled, params)
            adaptiveAvgPool2dBackward(dInput: dTop.data, dOut: dPooled.data,
                                      size: Resample2dSize(batch: b, channels: inChannels, height: h3, width: w3, outHeight: s, outWidth: s))
        }
        dLevels.append(dTop)
        return dLevels
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        classifier.conv.initialize(params, rng: &rng)
        for layer in psp + [bottleneck] + laterals + fpn + [fpnBottleneck] { layer.initialize(params, rng: &rng) }
    }
}

/// mmseg's FCNHead as the auxiliary head (`auxiliary_head.*`, num_convs 1, concat_input false):
/// a 3x3 ConvModule (`convs.0`), Dropout2d(0.1), 1x1 `conv_seg`.
public struct FCNHead {
    public let inChannels, channels, classes: Int
    let conv: LayerChain
    let classifier: SegClassifier

    public init(_ prefix: String = "auxiliary_head", in layout: inout ParameterLayout, inChannels: Int, channels: Int,
                classes: Int, dropout: Float = 0.1) {
        self.inChannels = inChannels; self.channels = channels; self.classes = classes
        classifier = SegClassifier(prefix, in: &layout, channels: channels, classes: classes, dropout: dropout)
        conv = convModule(prefix + ".convs.0", in: &layout, inChannels: inChannels, outChannels: channels, kernel: 3)
    }

    public struct Pass {
        let conv: LayerTrace
        let classifier: SegClassifier.Pass
        public var logits: Tensor { classifier.conv.output }
    }

    /// x (B, C, h, w); `shard`: its rows of a global batch (Dropout2d draws for the whole batch).
    public func forward(_ x: Tensor, _ params: ParameterStore, training: Bool, rng: inout RandomStream,
                        shard: BatchShard? = nil) -> Pass {
        let c = conv.forward(x, params, training: training)
        return Pass(conv: c, classifier: classifier.forward(c.output, params, training: training, rng: &rng, shard: shard))
    }

    public func backward(_ pass: Pass, dLogits: Tensor, _ params: ParameterStore) -> Tensor {
        let dFeats = classifier.backward(pass.classifier, dLogits: dLogits, params)
        let dx = Tensor(pass.conv.input.shape)
        conv.backward(pass.conv, dOut: dFeats, dInput: dx, params)
        return dx
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        classifier.conv.initialize(params, rng: &rng)
        conv.initialize(params, rng: &rng)
    }
}
