import MAEKernels
import MAEModels

/// mmseg's Feature2Pyramid neck (necks/featurepyramid.py): four same-width maps from the backbone
/// become a pyramid, channels kept (ViTDet halves them, mmseg does not). Rescales (4, 2, 1, 0.5):
/// x4 = ConvT(2, 2) + BN + GELU + ConvT(2, 2) (`neck.upsample_4x.{0,1,3}`), x2 = ConvT(2, 2)
/// (`neck.upsample_2x.0`), x1 identity, x0.5 MaxPool(2, 2). Scales are relative to the patch
/// stride P: strides P/4, P/2, P, 2P (4, 8, 16, 32 for ViT-B/16; 1, 2, 4, 8 for the patch-4 Shapes ViTs).
public struct Feature2Pyramid {
    public let width: Int
    let upsample4: LayerChain
    let upsample2: ConvTranspose2dLayer
    let downsample = MaxPool2d(kernel: 2)

    public init(_ prefix: String = "neck", in layout: inout ParameterLayout, width: Int) {
        self.width = width
        upsample4 = LayerChain([
            ConvTranspose2dLayer(prefix + ".upsample_4x.0", in: &layout, inChannels: width, outChannels: width),
            BatchNorm2d(prefix + ".upsample_4x.1", in: &layout, channels: width),
            GELU(),
            ConvTranspose2dLayer(prefix + ".upsample_4x.3", in: &layout, inChannels: width, outChannels: width),
        ])
        upsample2 = ConvTranspose2dLayer(prefix + ".upsample_2x.0", in: &layout, inChannels: width, outChannels: width)
    }

    public struct Pass {
        let x4: LayerTrace, x2: LayerTrace, half: LayerTrace
        public let levels: [FeatureMap]
    }

    /// inputs: four (B, D, h, w) maps at stride `inputs[k].stride` -> (B, D, 4h, 4w), (2h, 2w), (h, w), (h/2, w/2).
    public func forward(_ inputs: [FeatureMap], _ params: ParameterStore, training: Bool) -> Pass {
        precondition(inputs.count == 4, "Feature2Pyramid takes 4 maps, not \(inputs.count)")
        let s = inputs[0].stride
        let a = upsample4.forward(inputs[0].tensor, params, training: training)
        let b = upsample2.forward(inputs[1].tensor, params, training: training)
        let d = downsample.forward(inputs[3].tensor, params, training: training)
        return Pass(x4: a, x2: b, half: d, levels: [
            FeatureMap(a.output, stride: max(s / 4, 1)), FeatureMap(b.output, stride: max(s / 2, 1)),
            FeatureMap(inputs[2].tensor, stride: s), FeatureMap(d.output, stride: 2 * s),
        ])
    }

    /// The gradient of each input map from the gradient of each level (nil: none reached it).
    public func backward(_ pass: Pass, levelGradients: [Tensor?], _ params: ParameterStore) -> [Tensor] {
        func through(_ layer: any DenseLayer, _ trace: LayerTrace, _ g: Tensor?) -> Tensor {
            let dx = Tensor(trace.input.shape)
            if let g { layer.backward(trace, dOut: g, dInput: dx, params) }
            return dx
        }
        let identity = Tensor(pass.levels[2].tensor.shape)
        if let g = levelGradients[2] { addInPlace(identity, g) }
        return [through(upsample4, pass.x4, levelGradients[0]), through(upsample2, pass.x2, levelGradients[1]),
                identity, through(downsample, pass.half, levelGradients[3])]
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        upsample4.initialize(params, rng: &rng)
        upsample2.initialize(params, rng: &rng)
    }
}
