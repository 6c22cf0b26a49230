import MAEKernels
import MAEModels

/// The normalisation after a convolution.
public enum ConvNorm: Sendable {
    case none
    /// detectron2 "LN" (ChannelLayerNorm, eps 1e-6).
    case layerNorm
    /// BatchNorm2d (eps 1e-5, momentum 0.1; mmcv's SyncBN is this in one process).
    case batchNorm
}

/// The activation after the normalisation.
public enum ConvActivation: Sendable { case none, relu, gelu }

/// Convolution + optional norm + optional activation, under either library's names. The convolution
/// has a bias only without a norm (as both libraries default: `bias="auto"` in mmcv, `bias=not norm`
/// in detectron2's configs) unless `bias` says otherwise.
public enum ConvNormAct {
    /// detectron2 `Conv2d(..., norm=LN)`: the convolution at `prefix.weight`, its norm at `prefix.norm.*`.
    public static func detectron2(_ prefix: String, in layout: inout ParameterLayout, inChannels: Int,
                                  outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                                  norm: ConvNorm, activation: ConvActivation = .none, bias: Bool? = nil,
                                  weightInit: WeightInit = .msra) -> LayerChain {
        make(convPrefix: prefix, normPrefix: parameterName(prefix, "norm"), in: &layout, inChannels: inChannels,
             outChannels: outChannels, kernel: kernel, stride: stride, padding: padding, norm: norm,
             activation: activation, bias: bias, weightInit: weightInit)
    }

    /// mmcv `ConvModule`: the convolution at `prefix.conv.*`, its norm at `prefix.bn.*` (BatchNorm)
    /// or `prefix.ln.*` (LayerNorm), as mmcv's build_norm_layer names them.
    public static func mmcv(_ prefix: String, in layout: inout ParameterLayout, inChannels: Int,
                            outChannels: Int, kernel: Int, stride: Int = 1, padding: Int = 0,
                            norm: ConvNorm, activation: ConvActivation = .relu, bias: Bool? = nil,
                            weightInit: WeightInit = .torchDefault) -> LayerChain {
        let normField = norm == .batchNorm ? "bn" : "ln"
        return make(convPrefix: parameterName(prefix, "conv"), normPrefix: parameterName(prefix, normField),
                    in: &layout, inChannels: inChannels, outChannels: outChannels, kernel: kernel, stride: stride,
                    padding: padding, norm: norm, activation: activation, bias: bias, weightInit: weightInit)
    }

    static func make(convPrefix: String, normPrefix: String, in layout: inout ParameterLayout, inChannels: Int,
                     outChannels: Int, kernel: Int, stride: Int, padding: Int, norm: ConvNorm,
                     activation: ConvActivation, bias: Bool?, weightInit: WeightInit) -> LayerChain {
        var layers: [any DenseLayer] = [
            Conv2dLayer(convPrefix, in: &layout, inChannels: inChannels, outChannels: outChannels, kernel: kernel,
                        stride: stride, padding: padding, bias: bias ?? (norm == .none), weightInit: weightInit),
        ]
        switch norm {
        case .none: break
        case .layerNorm: layers.append(ChannelLayerNorm(normPrefix, in: &layout, channels: outChannels))
        case .batchNorm: layers.append(BatchNorm2d(normPrefix, in: &layout, channels: outChannels))
        }
        switch activation {
        case .none: break
        case .relu: layers.append(ReLU())
        case .gelu: layers.append(GELU())
        }
        return LayerChain(layers)
    }
}
