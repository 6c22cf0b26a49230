import MAEKernels
import MAEModels

/// mmseg's Feature2Pyramid neck (necks/featurepyramid.py): four same-width maps from the backbone
/// become a pyramid, channels kept (ViTDet halves them, mmseg does not). mmseg builds one of two
/// pyramids, chosen by whether its rescales hold 4:
/// - (4, 2, 1, 0.5), the default: x4 = ConvT(2, 2) + BN + GELU + ConvT(2, 2) (`neck.upsample_4x.{0,1,3}`),
///   x2 = ConvT(2, 2) (`neck.upsample_2x.0`), x1 identity, x0.5 MaxPool(2, 2); strides P/4, P/2, P, 2P
///   of the patch stride P (4, 8, 16, 32 for ViT-B/16; 1, 2, 4, 8 for the patch-4 Shapes ViTs);
/// - (2, 1, 0.5, 0.25): x2, x1, x0.5 and x0.25 = MaxPool(4, 4); strides P/2, P, 2P, 4P.
public struct Feature2Pyramid {
    /// mmseg's default rescales, and its other pyramid's (no x4 level).
    public static let defaultRescales: [Double] = [4, 2, 1, 0.5], coarseRescales: [Double] = [2, 1, 0.5, 0.25]
    /// The two pyramids mmseg's forward can run.
    public static let supportedRescales = [defaultRescales, coarseRescales]

    public let width: Int
    public let rescales: [Double]
    /// One per level: nil is the identity.
    let ops: [(any DenseLayer)?]

    public init(_ prefix: String = "neck", in layout: inout ParameterLayout, width: Int, rescales: [Double] = defaultRescales) {
        precondition(Self.supportedRescales.contains(rescales), "Feature2Pyramid's rescales are (4, 2, 1, 0.5) or (2, 1, 0.5, 0.25), not \(rescales)")
        self.width = width
        self.rescales = rescales
        ops = rescales.map { k -> (any DenseLayer)? in
            switch k {
            case 4:
                return LayerChain([
                    ConvTranspose2dLayer(prefix + ".upsample_4x.0", in: &layout, inChannels: width, outChannels: width),
                    BatchNorm2d(prefix + ".upsample_4x.1", in: &layout, channels: width),
                    GELU(),
                    ConvTranspose2dLayer(prefix + ".upsample_4x.3", in: &layout, inChannels: width, outChannels: width),
                ])
            case 2: return ConvTranspose2dLayer(prefix + ".upsample_2x.0", in: &layout, inChannels: width, outChannels: width)
            case 1: return nil
            case 0.5: return MaxPool2d(kernel: 2)
            default: return MaxPool2d(kernel: 4)
            }
        }
    }

    public struct Pass {
        /// Each level's trace (nil for the identity).
        let traces: [LayerTrace?]
        public let levels: [FeatureMap]
    }

    /// inputs: four (B, D, h, w) maps at stride `inputs[k].stride` -> level k (B, D, h r_k, w r_k) at
    /// stride / r_k, for the rescales r.
    public func forward(_ inputs: [FeatureMap], _ params: ParameterStore, training: Bool) -> Pass {
        precondition(inputs.count == 4, "Feature2Pyramid takes 4 maps, not \(inputs.count)")
        let traces = zip(ops, inputs).map { op, input in op?.forward(input.tensor, params, training: training) }
        let strides = levelStrides(inputStride: inputs[0].stride)
        return Pass(traces: traces, levels: (0..<4).map { FeatureMap(traces[$0]?.output ?? inputs[$0].tensor, stride: strides[$0]) })
    }

    /// The levels' strides for inputs at `inputStride` (the patch size): stride / r_k, at least 1.
    public func levelStrides(inputStride: Int) -> [Int] { rescales.map { max(Int(Double(inputStride) / $0), 1) } }

    /// The gradient of each input map from the gradient of each level (nil: none reached it).
    public func backward(_ pass: Pass, levelGradients: [Tensor?], _ params: ParameterStore) -> [Tensor] {
        (0..<4).map { k in
            guard let op = ops[k], let trace = pass.traces[k] else {
                let identity = Tensor(pass.levels[k].tensor.shape)
                if let g = levelGradients[k] { addInPlace(identity, g) }
                return identity
            }
            let dx = Tensor(trace.input.shape)
            if let g = levelGradients[k] { op.backward(trace, dOut: g, dInput: dx, params) }
            return dx
        }
    }

    /// Level by level (x4 before x2), so the default pyramid draws as it always has.
    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        for op in ops { op?.initialize(params, rng: &rng) }
    }
}
