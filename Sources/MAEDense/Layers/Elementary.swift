import MAEKernels
import MAEModels

/// nn.ReLU: max(x, 0), any shape; the gradient at 0 is 0, as torch.
public struct ReLU: DenseLayer {
    public init() {}
    public func outputShape(_ input: [Int]) -> [Int] { input }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let out = Tensor(input.shape), x = input.data, y = out.data
        Parallel.forRanges(input.count, grain: 1 << 14) { r in for i in r { y[i] = max(x[i], 0) } }
        return LayerTrace(input: input, output: out)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        guard let dx = dInput?.data else { return }
        let x = trace.input.data, g = dOut.data
        Parallel.forRanges(dOut.count, grain: 1 << 14) { r in for i in r where x[i] > 0 { dx[i] += g[i] } }
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {}
}

/// nn.GELU (exact, erf), any shape.
public struct GELU: DenseLayer {
    public init() {}
    public func outputShape(_ input: [Int]) -> [Int] { input }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let out = Tensor(input.shape)
        geluForward(out: out.data, input: input.data, count: input.count)
        return LayerTrace(input: input, output: out)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        guard let dx = dInput?.data else { return }
        geluBackward(dInput: dx, dOut: dOut.data, input: trace.input.data, count: dOut.count)
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {}
}

/// nn.MaxPool2d (floor mode, no dilation): (B,C,H,W) -> (B,C,OH,OW), OH = (H + 2 pad - K) / stride + 1.
/// ViTDet's x0.5 level is K = stride = 2; its p6 is K 1, stride 2.
public struct MaxPool2d: DenseLayer {
    public let kernel, stride, padding: Int

    public init(kernel: Int, stride: Int? = nil, padding: Int = 0) {
        self.kernel = kernel; self.stride = stride ?? kernel; self.padding = padding
    }

    func size(_ input: [Int]) -> Pool2dSize {
        precondition(input.count == 4, "max pooling takes (B, C, H, W), not \(input)")
        return Pool2dSize(batch: input[0], channels: input[1], height: input[2], width: input[3],
                          kernel: (kernel, kernel), stride: (stride, stride), padding: (padding, padding))
    }

    public func outputShape(_ input: [Int]) -> [Int] {
        let s = size(input)
        return [s.batch, s.channels, s.outHeight, s.outWidth]
    }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let s = size(input.shape)
        let out = Tensor(outputShape(input.shape))
        var winners = [Int32](repeating: 0, count: out.count)
        winners.withUnsafeMutableBufferPointer { maxPool2dForward(out: out.data, indices: $0.baseAddress!, input: input.data, size: s) }
        return LayerTrace(input: input, output: out, indices: winners)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        guard let dx = dInput?.data else { return }
        trace.indices.withUnsafeBufferPointer {
            maxPool2dBackward(dInput: dx, dOut: dOut.data, indices: $0.baseAddress!, size: size(trace.input.shape))
        }
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {}
}

/// nn.Linear: `prefix.weight` (OC, IC), `prefix.bias` (OC) when `bias`. Input (R, ...) with the
/// trailing dimensions flattened to IC (a box head's (R, C, 7, 7) RoI features) -> (R, OC).
public struct LinearLayer: DenseLayer {
    public let weightName: String
    public let biasName: String?
    public let inFeatures, outFeatures: Int
    public let weightInit: WeightInit

    public init(_ prefix: String, in layout: inout ParameterLayout, inFeatures: Int, outFeatures: Int,
                bias: Bool = true, weightInit: WeightInit = .torchDefault) {
        self.inFeatures = inFeatures; self.outFeatures = outFeatures; self.weightInit = weightInit
        weightName = parameterName(prefix, "weight")
        layout.add(weightName, [outFeatures, inFeatures])
        biasName = bias ? parameterName(prefix, "bias") : nil
        if let biasName { layout.add(biasName, [outFeatures]) }
    }

    public func outputShape(_ input: [Int]) -> [Int] {
        precondition(input.count >= 2 && input.dropFirst().reduce(1, *) == inFeatures,
                     "\(weightName): input \(input), expected (R, \(inFeatures))")
        return [input[0], outFeatures]
    }

    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let out = Tensor(outputShape(input.shape))
        linearForward(out: out.data, input: input.data, weight: params.read(weightName),
                      bias: biasName.map { params.read($0) },
                      rows: input.shape[0], inDim: inFeatures, outDim: outFeatures)
        return LayerTrace(input: input, output: out)
    }

    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        linearBackward(dInput: dInput?.data, dWeight: params.grad(weightName).baseAddress!,
                       dBias: biasName.map { params.grad($0).baseAddress! }, dOut: dOut.data,
                       input: trace.input.data, weight: params.read(weightName),
                       rows: trace.input.shape[0], inDim: inFeatures, outDim: outFeatures)
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        weightInit.fill(weight: params.value(weightName), shape: [outFeatures, inFeatures],
                        bias: biasName.map { params.value($0) }, rng: &rng)
    }
}
