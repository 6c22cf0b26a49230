// Parameterised layers over the flat ParameterStore. Each layer registers its parameters in a
// ParameterLayout under a caller-given name prefix, so detectron2 / mmseg checkpoint keys map one
// to one (`backbone.simfp_2.0.weight`, `decode_head.bottleneck.bn.running_mean`). A layer holds only
// names and sizes; values and gradients live in the store. Maps are (B,C,H,W), float32.
import MAEKernels
import MAEModels

/// What a layer's backward needs from its forward: the input and output, and whatever else the
/// layer kept (norm statistics, pooling winners, the traces of a chain's layers).
public struct LayerTrace {
    public let input: Tensor
    public let output: Tensor
    /// Per-layer saved values: ChannelLayerNorm's (mean, rstd) per pixel, BatchNorm2d's per channel.
    let saved: [Tensor]
    /// MaxPool2d's winners (flat index in each input plane).
    let indices: [Int32]
    /// A LayerChain's traces of its layers, in order.
    public let children: [LayerTrace]
    /// Whether the forward ran in training mode (BatchNorm2d's batch statistics depend on the input then).
    let training: Bool

    init(input: Tensor, output: Tensor, saved: [Tensor] = [], indices: [Int32] = [], children: [LayerTrace] = [],
         training: Bool = false) {
        self.input = input; self.output = output; self.saved = saved; self.indices = indices
        self.children = children; self.training = training
    }
}

/// A layer with forward and backward over a ParameterStore built from the layout it registered in.
public protocol DenseLayer {
    /// The output shape for an input shape.
    func outputShape(_ input: [Int]) -> [Int]
    /// Runs the layer. `training` selects batch statistics in BatchNorm2d, which then also updates
    /// its running statistics in `params`.
    func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace
    /// Accumulates parameter gradients into `params.grads` and, when `dInput` is given, the input
    /// gradient into it. dOut has the output's shape.
    func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore)
    /// Sets the layer's parameters (and buffers) to their initial values.
    func initialize(_ params: ParameterStore, rng: inout RandomStream)
}

extension DenseLayer {
    /// The output of `forward`, when no backward will follow.
    public func callAsFunction(_ input: Tensor, _ params: ParameterStore, training: Bool = false) -> Tensor {
        forward(input, params, training: training).output
    }
}

/// The checkpoint key of `field` under `prefix` ("" gives the bare field).
func parameterName(_ prefix: String, _ field: String) -> String {
    prefix.isEmpty ? field : prefix + "." + field
}

/// How a weight is initialised, as the reference code does it. Biases are zero except under
/// `.torchDefault`, where they are U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Conv2d / nn.Linear.
/// Fans are torch's: fan_in = size(1) * receptive field, fan_out = size(0) * receptive field
/// (so a transposed convolution's (C, OC, KH, KW) weight has fan_in = OC KH KW).
public enum WeightInit: Sendable {
    /// nn.Conv2d / nn.Linear reset_parameters: kaiming_uniform_(a = sqrt(5)), bound 1/sqrt(fan_in).
    case torchDefault
    /// detectron2 c2_msra_fill: kaiming_normal_(mode="fan_out", nonlinearity="relu"), std sqrt(2 / fan_out).
    case msra
    /// detectron2 c2_xavier_fill: kaiming_uniform_(a=1), bound sqrt(3 / fan_in).
    case xavier
    /// nn.init.normal_(std: std) (detectron2's box predictor, mmseg's conv_seg).
    case normal(std: Float)
    /// All zeros.
    case zeros

    /// Fills `weight` (shape `shape`) and `bias` (when present) from `rng`.
    func fill(weight: UnsafeMutableBufferPointer<Float>, shape: [Int], bias: UnsafeMutableBufferPointer<Float>?,
              rng: inout RandomStream) {
        let receptive = shape.dropFirst(2).reduce(1, *)
        let fanIn = shape[1] * receptive, fanOut = shape[0] * receptive
        bias?.update(repeating: 0)
        switch self {
        case .torchDefault:
            let bound = 1 / Float(fanIn).squareRoot()
            for i in weight.indices { weight[i] = (rng.nextFloat() * 2 - 1) * bound }
            if let bias { for i in bias.indices { bias[i] = (rng.nextFloat() * 2 - 1) * bound } }
        case .msra:
            let std = (2 / Float(fanOut)).squareRoot()
            for i in weight.indices { weight[i] = Float(rng.normal()) * std }
        case .xavier:
            let bound = (3 / Float(fanIn)).squareRoot()
            for i in weight.indices { weight[i] = (rng.nextFloat() * 2 - 1) * bound }
        case .normal(let std):
            for i in weight.indices { weight[i] = Float(rng.normal()) * std }
        case .zeros:
            weight.update(repeating: 0)
        }
    }
}

/// Layers run one after another (nn.Sequential); the chain's backward allocates the
/// intermediate gradients.
public struct LayerChain: DenseLayer {
    public let layers: [any DenseLayer]

    public init(_ layers: [any DenseLayer]) {
        precondition(!layers.isEmpty, "an empty layer chain")
        self.layers = layers
    }

    public func outputShape(_ input: [Int]) -> [Int] { layers.reduce(input) { $1.outputShape($0) } }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        var traces: [LayerTrace] = []
        var x = input
        for layer in layers {
            let t = layer.forward(x, params, training: training)
            traces.append(t)
            x = t.output
        }
        return LayerTrace(input: input, output: x, children: traces)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        var g = dOut
        for i in layers.indices.reversed() {
            let t = trace.children[i]
            let dx = i == 0 ? dInput : Tensor(t.input.shape)
            layers[i].backward(t, dOut: g, dInput: dx, params)
            guard let dx else { return }
            g = dx
        }
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        for layer in layers { layer.initialize(params, rng: &rng) }
    }
}
