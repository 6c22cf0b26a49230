import Foundation
import MAEKernels
import MAEModels

/// ViTDet's simple feature pyramid (detectron2 modeling/backbone/vit.py `SimpleFeaturePyramid`)
/// from the backbone's last map (B, D, Gh, Gw) at stride s (the patch size). Each scale factor
/// makes one level at stride s / factor, named as detectron2 by that stride's log2 (`simfp_<k>`,
/// output `p<k>`):
///   4:   ConvT(D -> D/2, k2 s2), LN, GELU, ConvT(D/2 -> D/4, k2 s2)   (layers .0 .1 .2 .3)
///   2:   ConvT(D -> D/2, k2 s2)                                      (.0)
///   1:   the map itself
///   0.5: MaxPool(k2 s2)                                              (.0)
/// then Conv1x1(-> C, no bias) + LN and Conv3x3(C, pad 1, no bias) + LN (the next two indices, each
/// with its norm at `.norm`), no activation; LN is detectron2's channel LayerNorm (eps 1e-6). With
/// `topBlock`, one more level (LastLevelMaxPool: max_pool2d(k 1, s 2) of the last) at twice the
/// last stride. The scale factors are relative to the patch stride, so a patch-16 ViT gives strides
/// 4, 8, 16, 32 (+ 64; detectron2's p2 .. p6) and the shipped patch-4 backbone 1, 2, 4, 8 (+ 16:
/// p0 .. p4); pass fewer scale factors (e.g. [2, 1, 0.5]) to leave out a level that is too fine.
/// Initialisation is torch's default, as detectron2 leaves these layers.
public struct SimpleFeaturePyramid {
    /// One level: its stride, `simfp_<k>` name and layers.
    public struct Stage {
        public let name: String
        public let stride: Int
        public let layers: LayerChain
    }

    public let inChannels, inStride, outChannels: Int
    public let scaleFactors: [Double]
    public let stages: [Stage]
    /// The p6-style max-pool level after the last stage.
    public let topBlock: Bool
    private let top = MaxPool2d(kernel: 1, stride: 2)

    /// Registers the pyramid's parameters in `layout` as `PREFIX.simfp_<k>.<i>.*` (detectron2's
    /// "backbone.simfp_2.0.weight" with prefix "backbone").
    public init(_ prefix: String = "backbone", in layout: inout ParameterLayout, inChannels d: Int, inStride: Int,
                outChannels: Int = 256, scaleFactors: [Double] = [4, 2, 1, 0.5], topBlock: Bool = true) {
        precondition(!scaleFactors.isEmpty, "a pyramid needs at least one scale factor")
        self.inChannels = d; self.inStride = inStride; self.outChannels = outChannels
        self.scaleFactors = scaleFactors; self.topBlock = topBlock
        var stages: [Stage] = []
        for scale in scaleFactors {
            let stride = Double(inStride) / scale
            precondition(stride >= 1 && stride == stride.rounded() && Int(stride).nonzeroBitCount == 1,
                         "scale factor \(scale) of stride \(inStride) is not a power-of-two stride")
            let name = parameterName(prefix, "simfp_\(Int(stride).trailingZeroBitCount)")
            let key = { (i: Int) in "\(name).\(i)" }
            var layers: [any DenseLayer] = []
            var width = d
            switch scale {
            case 4:
                precondition(d % 4 == 0, "the x4 level needs a width divisible by 4, not \(d)")
                layers = [ConvTranspose2dLayer(key(0), in: &layout, inChannels: d, outChannels: d / 2),
                          ChannelLayerNorm(key(1), in: &layout, channels: d / 2),
                          GELU(),
                          ConvTranspose2dLayer(key(3), in: &layout, inChannels: d / 2, outChannels: d / 4)]
                width = d / 4
            case 2:
                precondition(d % 2 == 0, "the x2 level needs an even width, not \(d)")
                layers = [ConvTranspose2dLayer(key(0), in: &layout, inChannels: d, outChannels: d / 2)]
                width = d / 2
            case 1:
                layers = []
            case 0.5:
                layers = [MaxPool2d(kernel: 2)]
            default:
                preconditionFailure("scale factor \(scale) is not one of ViTDet's 4, 2, 1, 0.5")
            }
            let next = layers.count
            layers.append(ConvNormAct.detectron2(key(next), in: &layout, inChannels: width, outChannels: outChannels,
                                                 kernel: 1, norm: .layerNorm, weightInit: .torchDefault))
            layers.append(ConvNormAct.detectron2(key(next + 1), in: &layout, inChannels: outChannels,
                                                 outChannels: outChannels, kernel: 3, padding: 1, norm: .layerNorm,
                                                 weightInit: .torchDefault))
            stages.append(Stage(name: name, stride: Int(stride), layers: LayerChain(layers)))
        }
        precondition(zip(stages, stages.dropFirst()).allSatisfy { $1.stride == 2 * $0.stride },
                     "the pyramid's strides \(stages.map(\.stride)) must double from level to level")
        self.stages = stages
    }

    /// The levels' strides, finest first (the top block's last).
    public var strides: [Int] { stages.map(\.stride) + (topBlock ? [2 * stages.last!.stride] : []) }

    /// detectron2's output names, `p<log2 stride>`, finest first.
    public var levelNames: [String] { strides.map { "p\($0.trailingZeroBitCount)" } }

    /// What the pyramid's backward needs.
    public struct Context {
        let input: Tensor
        let stages: [LayerTrace]
        let top: LayerTrace?
    }

    /// map (B, D, Gh, Gw) at `inStride` -> the levels, finest first, each (B, C, H_l, W_l).
    public func forward(_ map: Tensor, _ params: ParameterStore, training: Bool) -> (levels: [FeatureMap], context: Context) {
        precondition(map.shape.count == 4 && map.shape[1] == inChannels, "pyramid input \(map.shape), expected (B, \(inChannels), H, W)")
        let traces = stages.map { $0.layers.forward(map, params, training: training) }
        var levels = zip(stages, traces).map { FeatureMap($1.output, stride: $0.stride) }
        var topTrace: LayerTrace?
        if topBlock {
            let t = top.forward(traces.last!.output, params, training: training)
            levels.append(FeatureMap(t.output, stride: 2 * stages.last!.stride))
            topTrace = t
        }
        return (levels, Context(input: map, stages: traces, top: topTrace))
    }

    /// Accumulates the parameter gradients and dInput (B, D, Gh, Gw) from one gradient per level
    /// (each shaped as its level).
    public func backward(_ ctx: Context, levelGradients: [Tensor], dInput: Tensor, _ params: ParameterStore) {
        precondition(levelGradients.count == strides.count, "\(levelGradients.count) gradients for \(strides.count) levels")
        var grads = Array(levelGradients.prefix(stages.count))
        if let t = ctx.top {
            let last = grads[stages.count - 1].clone()
            top.backward(t, dOut: levelGradients[stages.count], dInput: last, params)
            grads[stages.count - 1] = last
        }
        for (i, stage) in stages.enumerated() {
            stage.layers.backward(ctx.stages[i], dOut: grads[i], dInput: dInput, params)
        }
    }

    /// Torch's default initialisation of every layer, LN weights 1 and biases 0.
    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        for stage in stages { stage.layers.initialize(params, rng: &rng) }
    }
}
