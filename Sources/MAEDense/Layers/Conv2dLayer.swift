import MAEKernels
import MAEModels

/// nn.Conv2d (groups 1, square kernel): `prefix.weight` (OC, C, K, K), `prefix.bias` (OC) when `bias`.
/// input (B,C,H,W) -> (B,OC,OH,OW), OH = (H + 2 pad - dilation (K - 1) - 1) / stride + 1.
public struct Conv2dLayer: DenseLayer {
    public let weightName: String
    public let biasName: String?
    public let inChannels, outChannels, kernel, stride, padding, dilation: Int
    public let weightInit: WeightInit

    public init(_ prefix: String, in layout: inout ParameterLayout, inChannels: Int, outChannels: Int,
                kernel: Int, stride: Int = 1, padding: Int = 0, dilation: Int = 1, bias: Bool = true,
                weightInit: WeightInit = .torchDefault) {
        self.inChannels = inChannels; self.outChannels = outChannels; self.kernel = kernel
        self.stride = stride; self.padding = padding; self.dilation = dilation; self.weightInit = weightInit
        weightName = parameterName(prefix, "weight")
        layout.add(weightName, [outChannels, inChannels, kernel, kernel])
        biasName = bias ? parameterName(prefix, "bias") : nil
        if let biasName { layout.add(biasName, [outChannels]) }
    }

    func size(_ input: [Int]) -> Conv2dSize {
        precondition(input.count == 4 && input[1] == inChannels,
                     "\(weightName): input \(input), expected (B, \(inChannels), H, W)")
        return Conv2dSize(batch: input[0], inChannels: inChannels, height: input[2], width: input[3],
                          outChannels: outChannels, kernel: (kernel, kernel), stride: (stride, stride),
                          padding: (padding, padding), dilation: (dilation, dilation))
    }

    public func outputShape(_ input: [Int]) -> [Int] {
        let s = size(input)
        return [s.batch, outChannels, s.outHeight, s.outWidth]
    }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let s = size(input.shape)
        let out = Tensor([s.batch, outChannels, s.outHeight, s.outWidth])
        conv2dForward(out: out.data, input: input.data, weight: params.read(weightName),
                      bias: biasName.map { params.read($0) }, size: s)
        return LayerTrace(input: input, output: out)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        conv2dBackward(dInput: dInput?.data, dWeight: params.grad(weightName).baseAddress!,
                       dBias: biasName.map { params.grad($0).baseAddress! }, dOut: dOut.data,
                       input: trace.input.data, weight: params.read(weightName),
                       size: size(trace.input.shape))
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        weightInit.fill(weight: params.value(weightName), shape: [outChannels, inChannels, kernel, kernel],
                        bias: biasName.map { params.value($0) }, rng: &rng)
    }
}

/// nn.ConvTranspose2d (groups 1, square kernel, no output padding): `prefix.weight` (C, OC, K, K)
/// as torch stores it, `prefix.bias` (OC) when `bias`. input (B,C,H,W) -> (B,OC,OH,OW),
/// OH = (H - 1) stride - 2 pad + K; ViTDet's and mmseg's upsamplers are K = stride = 2.
public struct ConvTranspose2dLayer: DenseLayer {
    public let weightName: String
    public let biasName: String?
    public let inChannels, outChannels, kernel, stride, padding: Int
    public let weightInit: WeightInit

    public init(_ prefix: String, in layout: inout ParameterLayout, inChannels: Int, outChannels: Int,
                kernel: Int = 2, stride: Int = 2, padding: Int = 0, bias: Bool = true,
                weightInit: WeightInit = .torchDefault) {
        self.inChannels = inChannels; self.outChannels = outChannels; self.kernel = kernel
        self.stride = stride; self.padding = padding; self.weightInit = weightInit
        weightName = parameterName(prefix, "weight")
        layout.add(weightName, [inChannels, outChannels, kernel, kernel])
        biasName = bias ? parameterName(prefix, "bias") : nil
        if let biasName { layout.add(biasName, [outChannels]) }
    }

    func size(_ input: [Int]) -> ConvTranspose2dSize {
        precondition(input.count == 4 && input[1] == inChannels,
                     "\(weightName): input \(input), expected (B, \(inChannels), H, W)")
        return ConvTranspose2dSize(batch: input[0], inChannels: inChannels, height: input[2], width: input[3],
                                   outChannels: outChannels, kernel: (kernel, kernel), stride: (stride, stride),
                                   padding: (padding, padding))
    }

    public func outputShape(_ input: [Int]) -> [Int] {
        let s = size(input)
        return [s.batch, outChannels, s.outHeight, s.outWidth]
    }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let s = size(input.shape)
        let out = Tensor([s.batch, outChannels, s.outHeight, s.outWidth])
        convTranspose2dForward(out: out.data, input: input.data, weight: params.read(weightName),
                               bias: biasName.map { params.read($0) }, size: s)
        return LayerTrace(input: input, output: out)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        convTranspose2dBackward(dInput: dInput?.data, dWeight: params.grad(weightName).baseAddress!,
                                dBias: biasName.map { params.grad($0).baseAddress! }, dOut: dOut.data,
                                input: trace.input.data, weight: params.read(weightName),
                                size: size(trace.input.shape))
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        weightInit.fill(weight: params.value(weightName), shape: [inChannels, outChannels, kernel, kernel],
                        bias: biasName.map { params.value($0) }, rng: &rng)
    }
}
