import MAEDense
import MAEKernels
import MAEModels
import TestSupport
import XCTest

/// A layer registered alone in a fresh layout, with its store.
private struct Built {
    let layer: any DenseLayer
    let store: ParameterStore

    init(_ make: (inout ParameterLayout) -> any DenseLayer) {
        var layout = ParameterLayout()
        layer = make(&layout)
        store = ParameterStore(layout: layout)
    }

    /// sum(out * g) of a forward on `input` (shape `shape`), in Double.
    func loss(_ input: [Float], shape: [Int], g: [Float], training: Bool) -> Double {
        let out = layer.forward(Tensor(shape, input), store, training: training).output
        return zip(out.array, g).reduce(0) { $0 + Double($1.0) * Double($1.1) }
    }
}

final class LayerTests: XCTestCase {
    // MARK: - Against PyTorch

    /// Loads the case's parameters and buffers by their torch names, runs forward and backward of
    /// sum(out * grad_out), and compares the output, d_x and every trainable parameter's gradient.
    private func checkFixture(_ name: String, training: Bool = false, rtol: Float = 1e-4, atol: Float = 1e-5,
                              file: StaticString = #filePath, line: UInt = #line,
                              _ make: (inout ParameterLayout) -> any DenseLayer) throws -> Built {
        let fx = try DenseFixture("dense_layers")
        let built = Built(make)
        for spec in built.store.specs {
            try built.store.set(spec.name, shape: spec.shape, fx.floats("\(name)/\(spec.name)"))
        }
        let x = try Tensor(fx.shape("\(name)/x"), fx.floats("\(name)/x"))
        let trace = built.layer.forward(x, built.store, training: training)
        XCTAssertEqual(trace.output.shape, try fx.shape("\(name)/out"), "\(name) output shape", file: file, line: line)
        assertClose(trace.output.array, try fx.floats("\(name)/out"), rtol: rtol, atol: atol, "\(name) out",
                    file: file, line: line)
        let dOut = try Tensor(trace.output.shape, fx.floats("\(name)/grad_out"))
        let dx = Tensor(x.shape)
        built.store.zeroGrads()
        built.layer.backward(trace, dOut: dOut, dInput: dx, built.store)
        assertClose(dx.array, try fx.floats("\(name)/d_x"), rtol: rtol, atol: atol, "\(name) d_x", file: file, line: line)
        var compared = 0
        for spec in built.store.specs where spec.trainable {
            assertClose(Array(built.store.grad(spec.name)), try fx.floats("\(name)/d_\(spec.name)"), rtol: rtol,
                        atol: atol, "\(name) d_\(spec.name)", file: file, line: line)
            compared += 1
        }
        XCTAssertEqual(compared, built.store.specs.filter(\.trainable).count, file: file, line: line)
        return built
    }

    func testConv3x3Stride1MatchesTorch() throws {
        _ = try checkFixture("conv3x3_s1") {
            Conv2dLayer("", in: &$0, inChannels: 3, outChannels: 4, kernel: 3, stride: 1, padding: 1)
        }
    }

    func testConv3x3Stride2WithoutBiasMatchesTorch() throws {
        let built = try checkFixture("conv3x3_s2") {
            Conv2dLayer("", in: &$0, inChannels: 3, outChannels: 5, kernel: 3, stride: 2, padding: 1, bias: false)
        }
        XCTAssertEqual(built.store.specs.map(\.name), ["weight"])
    }

    func testConvTransposeK2S2MatchesTorch() throws {
        _ = try checkFixture("convT_k2s2") { ConvTranspose2dLayer("", in: &$0, inChannels: 4, outChannels: 3) }
    }

    /// detectron2's "LN" normalises over channels at each pixel (not over W as nn.LayerNorm would).
    func testChannelLayerNormMatchesDetectron2() throws {
        _ = try checkFixture("channel_ln") { ChannelLayerNorm("", in: &$0, channels: 5) }
    }

    /// Training: batch statistics, running mean / UNBIASED running var updated with momentum 0.1,
    /// num_batches_tracked + 1; the buffers match torch's after the step.
    func testBatchNormTrainingMatchesTorchAndUpdatesRunningStatistics() throws {
        let fx = try DenseFixture("dense_layers")
        let built = try checkFixture("bn_train", training: true) { BatchNorm2d("", in: &$0, channels: 4) }
        for buffer in ["running_mean", "running_var", "num_batches_tracked"] {
            assertClose(Array(built.store.value(buffer)), try fx.floats("bn_train/after/\(buffer)"), rtol: 1e-5,
                        atol: 1e-6, "bn_train \(buffer) after the step")
        }
        XCTAssertEqual(built.store.specs.filter { !$0.trainable }.map(\.name),
                       ["running_mean", "running_var", "num_batches_tracked"])
    }

    /// Evaluation: the running statistics normalise, the buffers stay as they were.
    func testBatchNormEvaluationUsesRunningStatistics() throws {
        let fx = try DenseFixture("dense_layers")
        let built = try checkFixture("bn_eval") { BatchNorm2d("", in: &$0, channels: 4) }
        XCTAssertEqual(Array(built.store.value("running_var")), try fx.floats("bn_eval/running_var"))
        XCTAssertEqual(built.store.value("num_batches_tracked")[0], 3)
    }

    func testMaxPoolMatchesTorch() throws {
        _ = try checkFixture("maxpool_2") { _ in MaxPool2d(kernel: 2) }
    }

    /// nn.Sequential(Flatten, Linear) saved as "1.weight": the prefix gives the checkpoint's names.
    func testLinearOverFlattenedMapsMatchesTorch() throws {
        _ = try checkFixture("linear") { LinearLayer("1", in: &$0, inFeatures: 12, outFeatures: 5) }
    }

    // MARK: - Against finite differences

    /// d sum(out * g) / d input and / d every trainable parameter, against central differences.
    private func checkFiniteDifferences(_ name: String, shape: [Int], training: Bool = false, step: Float = 1e-2,
                                        file: StaticString = #filePath, line: UInt = #line,
                                        _ make: (inout ParameterLayout) -> any DenseLayer) {
        let built = Built(make)
        var rng = RandomStream(seed: 7)
        built.layer.initialize(built.store, rng: &rng)
        // Non-trivial affine parameters for the norms (their init is 1 / 0).
        for spec in built.store.specs where spec.trainable {
            let v = built.store.value(spec.name)
            for i in v.indices { v[i] += Float(rng.normal()) * 0.3 }
        }
        let input = randomValues(shape.reduce(1, *), seed: 11)
        let x = Tensor(shape, input)
        let trace = built.layer.forward(x, built.store, training: training)
        let g = randomValues(trace.output.count, seed: 13)
        let dx = Tensor(shape)
        built.store.zeroGrads()
        built.layer.backward(trace, dOut: Tensor(trace.output.shape, g), dInput: dx, built.store)
        checkGradient("\(name) d_x", input: input, analytic: dx.array, step: step, file: file, line: line) {
            built.loss($0, shape: shape, g: g, training: training)
        }
        for spec in built.store.specs where spec.trainable {
            let values = built.store.value(spec.name), original = Array(values)
            checkGradient("\(name) d_\(spec.name)", input: original, analytic: Array(built.store.grad(spec.name)),
                          step: step, file: file, line: line) { p in
                _ = values.update(fromContentsOf: p)
                defer { _ = values.update(fromContentsOf: original) }
                return built.loss(input, shape: shape, g: g, training: training)
            }
        }
    }

    func testConvGradientsMatchFiniteDifferences() {
        checkFiniteDifferences("conv", shape: [2, 3, 6, 5]) {
            Conv2dLayer("c", in: &$0, inChannels: 3, outChannels: 4, kernel: 3, stride: 2, padding: 1)
        }
    }

    func testConvTransposeGradientsMatchFiniteDifferences() {
        checkFiniteDifferences("convT", shape: [2, 3, 3, 4]) {
            ConvTranspose2dLayer("t", in: &$0, inChannels: 3, outChannels: 2)
        }
    }

    /// On a plane whose per-worker pixel runs span several 512-pixel blocks (the last one partial),
    /// every pixel is normalised over its channels as the definition in Double says (rtol 1e-5).
    func testChannelLayerNormOverManyPixelBlocksMatchesDefinition() {
        var layout = ParameterLayout()
        let ln = ChannelLayerNorm("n", in: &layout, channels: 3)
        let store = ParameterStore(layout: layout)
        let weight = randomValues(3, seed: 81), bias = randomValues(3, seed: 82)
        _ = store.value("n.weight").update(fromContentsOf: weight)
        _ = store.value("n.bias").update(fromContentsOf: bias)
        let (c, plane) = (3, 41 * 60)
        let x = randomValues(2 * c * plane, seed: 83).map { $0 * 3 + 1 }
        let y = ln.forward(Tensor([2, c, 41, 60], x), store, training: false).output.array
        var expected = [Float](repeating: 0, count: x.count)
        for image in 0..<2 { for p in 0..<plane {
            let base = image * c * plane + p
            let v: [Double] = (0..<c).map { (ch: Int) -> Double in Double(x[base + ch * plane]) }
            let mean: Double = v.reduce(0, +) / Double(c)
            let variance: Double = v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(c)
            for ch in 0..<c {
                let rstd: Double = 1 / (variance + 1e-6).squareRoot()
                let normalised: Double = (v[ch] - mean) * rstd
                let affine: Double = normalised * Double(weight[ch]) + Double(bias[ch])
                expected[(image * c + ch) * plane + p] = Float(affine)
            }
        } }
        assertClose(y, expected, rtol: 1e-5, atol: 1e-5, "channel LN over 2460-pixel planes")
    }

    func testChannelLayerNormGradientsMatchFiniteDifferences() {
        checkFiniteDifferences("channel LN", shape: [2, 6, 3, 5]) { ChannelLayerNorm("n", in: &$0, channels: 6) }
    }

    func testBatchNormGradientsMatchFiniteDifferencesInBothModes() {
        checkFiniteDifferences("BN train", shape: [3, 4, 3, 2], training: true) { BatchNorm2d("b", in: &$0, channels: 4) }
        checkFiniteDifferences("BN eval", shape: [3, 4, 3, 2]) { BatchNorm2d("b", in: &$0, channels: 4) }
    }

    func testActivationPoolAndLinearGradientsMatchFiniteDifferences() {
        checkFiniteDifferences("ReLU", shape: [2, 3, 4, 4], step: 1e-3) { _ in ReLU() }
        checkFiniteDifferences("GELU", shape: [2, 3, 4, 4]) { _ in GELU() }
        checkFiniteDifferences("max pool", shape: [2, 3, 6, 7], step: 1e-3) { _ in MaxPool2d(kernel: 2) }
        checkFiniteDifferences("p6 pool", shape: [1, 2, 5, 5], step: 1e-3) { _ in MaxPool2d(kernel: 1, stride: 2) }
        checkFiniteDifferences("linear", shape: [3, 2, 2, 2]) { LinearLayer("fc", in: &$0, inFeatures: 8, outFeatures: 5) }
    }

    /// ConvNormAct under both libraries' names, and its chain's gradient.
    func testConvNormActNamesAndGradients() {
        var d2 = ParameterLayout()
        _ = ConvNormAct.detectron2("backbone.simfp_2.4", in: &d2, inChannels: 8, outChannels: 4, kernel: 1,
                                   norm: .layerNorm)
        XCTAssertEqual(d2.specs.map(\.name),
                       ["backbone.simfp_2.4.weight", "backbone.simfp_2.4.norm.weight", "backbone.simfp_2.4.norm.bias"])
        var mm = ParameterLayout()
        _ = ConvNormAct.mmcv("decode_head.bottleneck", in: &mm, inChannels: 8, outChannels: 4, kernel: 3, padding: 1,
                             norm: .batchNorm)
        XCTAssertEqual(mm.specs.map(\.name), ["decode_head.bottleneck.conv.weight", "decode_head.bottleneck.bn.weight",
                                             "decode_head.bottleneck.bn.bias", "decode_head.bottleneck.bn.running_mean",
                                             "decode_head.bottleneck.bn.running_var",
                                             "decode_head.bottleneck.bn.num_batches_tracked"])
        checkFiniteDifferences("conv LN GELU", shape: [2, 3, 5, 4]) {
            ConvNormAct.detectron2("x", in: &$0, inChannels: 3, outChannels: 4, kernel: 3, padding: 1, norm: .layerNorm,
                                   activation: .gelu)
        }
        checkFiniteDifferences("conv BN ReLU", shape: [2, 3, 5, 4], training: true, step: 1e-3) {
            ConvNormAct.mmcv("y", in: &$0, inChannels: 3, outChannels: 4, kernel: 3, padding: 1, norm: .batchNorm)
        }
    }

    /// The reference initialisations' scales: msra std sqrt(2 / fan_out), xavier bound sqrt(3 / fan_in),
    /// torch's default bound 1 / sqrt(fan_in) on the weight and the bias, zero biases otherwise.
    func testInitialisationsHaveTheReferenceScales() {
        func weights(_ fill: WeightInit) -> (w: [Float], b: [Float]) {
            var layout = ParameterLayout()
            let conv = Conv2dLayer("c", in: &layout, inChannels: 64, outChannels: 32, kernel: 3, weightInit: fill)
            let store = ParameterStore(layout: layout)
            var rng = RandomStream(seed: 3)
            conv.initialize(store, rng: &rng)
            return (Array(store.value("c.weight")), Array(store.value("c.bias")))
        }
        func std(_ v: [Float]) -> Float {
            let m = v.reduce(0, +) / Float(v.count)
            return (v.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Float(v.count)).squareRoot()
        }
        let msra = weights(.msra), xavier = weights(.xavier), torch = weights(.torchDefault)
        XCTAssertEqual(std(msra.w), (2 / Float(32 * 9)).squareRoot(), accuracy: 0.004)
        XCTAssertEqual(msra.b, [Float](repeating: 0, count: 32))
        XCTAssertLessThanOrEqual(xavier.w.map(abs).max()!, (3 / Float(64 * 9)).squareRoot())
        XCTAssertEqual(std(xavier.w), 1 / Float(64 * 9).squareRoot(), accuracy: 0.002)
        XCTAssertLessThanOrEqual(torch.b.map(abs).max()!, 1 / Float(64 * 9).squareRoot())
        XCTAssertGreaterThan(torch.b.map(abs).max()!, 0)
    }
}
