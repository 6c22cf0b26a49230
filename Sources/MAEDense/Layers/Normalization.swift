import MAEKernels
import MAEModels

// MARK: - Channel LayerNorm (detectron2 "LN")

/// detectron2.layers.LayerNorm: per pixel, mean and biased variance over the C channels,
/// y = (x - mean) / sqrt(var + eps) * weight[c] + bias[c]. `prefix.weight`, `prefix.bias` (C).
/// (B,C,H,W) -> (B,C,H,W). Not nn.LayerNorm, which would normalise over the last dimension (W).
public struct ChannelLayerNorm: DenseLayer {
    public let weightName, biasName: String
    public let channels: Int
    public let eps: Float

    public init(_ prefix: String, in layout: inout ParameterLayout, channels: Int, eps: Float = 1e-6) {
        self.channels = channels; self.eps = eps
        weightName = parameterName(prefix, "weight"); biasName = parameterName(prefix, "bias")
        layout.add(weightName, [channels])
        layout.add(biasName, [channels])
    }

    public func outputShape(_ input: [Int]) -> [Int] {
        precondition(input.count == 4 && input[1] == channels, "\(weightName): input \(input), expected C \(channels)")
        return input
    }

    /// Saved: mean (B, H W), rstd (B, H W).
    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let shape = outputShape(input.shape)
        let batch = shape[0], plane = shape[2] * shape[3], c = channels
        let out = Tensor(shape), mean = Tensor([batch, plane]), rstd = Tensor([batch, plane])
        let w = params.value(weightName).baseAddress!, b = params.value(biasName).baseAddress!
        let x = input.data, y = out.data
        let invC = 1 / Float(c)
        // Each worker takes a run of pixels; the channel loop is outermost so the pixel loop is contiguous.
        forPixelRuns(batch: batch, plane: plane) { image, pixels in
            let base = image * c * plane, m = mean.data + image * plane, r = rstd.data + image * plane
            for p in pixels { m[p] = 0; r[p] = 0 }
            for ch in 0..<c {
                let xc = x + base + ch * plane
                for p in pixels { m[p] += xc[p] }
            }
            for p in pixels { m[p] *= invC }
            for ch in 0..<c {
                let xc = x + base + ch * plane
                for p in pixels { let d = xc[p] - m[p]; r[p] += d * d }
            }
            for p in pixels { r[p] = 1 / (r[p] * invC + eps).squareRoot() }
            for ch in 0..<c {
                let xc = x + base + ch * plane, yc = y + base + ch * plane, wc = w[ch], bc = b[ch]
                for p in pixels { yc[p] = (xc[p] - m[p]) * r[p] * wc + bc }
            }
        }
        return LayerTrace(input: input, output: out, saved: [mean, rstd])
    }

    /// dx = rstd (d - mean_c d - xhat mean_c(d xhat)), d = dOut * weight; dWeight += sum dOut xhat,
    /// dBias += sum dOut (summed per channel in a fixed order, so the thread count does not matter).
    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        let shape = trace.input.shape
        let batch = shape[0], plane = shape[2] * shape[3], c = channels
        let mean = trace.saved[0].data, rstd = trace.saved[1].data
        let x = trace.input.data, g = dOut.data
        let w = params.value(weightName).baseAddress!
        let dW = params.grad(weightName).baseAddress!, dB = params.grad(biasName).baseAddress!
        Parallel.forRanges(c) { chans in
            for ch in chans {
                var sw: Float = 0, sb: Float = 0
                for image in 0..<batch {
                    let at = (image * c + ch) * plane, m = mean + image * plane, r = rstd + image * plane
                    for p in 0..<plane { sw += g[at + p] * (x[at + p] - m[p]) * r[p]; sb += g[at + p] }
                }
                dW[ch] += sw; dB[ch] += sb
            }
        }
        guard let dx = dInput?.data else { return }
        let invC = 1 / Float(c)
        forPixelRuns(batch: batch, plane: plane) { image, pixels in
            let base = image * c * plane, m = mean + image * plane, r = rstd + image * plane
            var sumD = [Float](repeating: 0, count: pixels.count), sumDX = sumD
            let lo = pixels.lowerBound
            for ch in 0..<c {
                let xc = x + base + ch * plane, gc = g + base + ch * plane, wc = w[ch]
                for p in pixels {
                    let d = gc[p] * wc
                    sumD[p - lo] += d; sumDX[p - lo] += d * (xc[p] - m[p]) * r[p]
                }
            }
            for ch in 0..<c {
                let xc = x + base + ch * plane, gc = g + base + ch * plane, dc = dx + base + ch * plane, wc = w[ch]
                for p in pixels {
                    let xhat = (xc[p] - m[p]) * r[p]
                    dc[p] += r[p] * (gc[p] * wc - sumD[p - lo] * invC - xhat * sumDX[p - lo] * invC)
                }
            }
        }
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        params.value(weightName).update(repeating: 1)
        params.value(biasName).update(repeating: 0)
    }
}

/// Runs `body(image, pixels)` over every image's pixels 0..<plane, split into static runs over
/// the workers (a run never crosses an image).
private func forPixelRuns(batch: Int, plane: Int, _ body: (Int, Range<Int>) -> Void) {
    let runsPerImage = max(1, Parallel.chunkCount(batch * plane, grain: 256) / max(batch, 1))
    Parallel.forEach(batch * runsPerImage) { job in
        let image = job / runsPerImage, k = job % runsPerImage
        let lo = plane * k / runsPerImage, hi = plane * (k + 1) / runsPerImage
        if lo < hi { body(image, lo..<hi) }
    }
}

// MARK: - BatchNorm2d

/// nn.BatchNorm2d (affine, track_running_stats): `prefix.weight`, `prefix.bias` (C), and the
/// buffers `prefix.running_mean`, `prefix.running_var` (C), `prefix.num_batches_tracked` (a
/// scalar, kept as a float) in the layout as non-trainable entries, so they save and load by name.
/// Training: normalises with the batch's mean and biased variance over (B, H, W), and updates
/// running = (1 - momentum) running + momentum batch with the UNBIASED variance, as torch.
/// Evaluation: normalises with the running statistics. (B,C,H,W) -> (B,C,H,W).
public struct BatchNorm2d: DenseLayer {
    public let weightName, biasName, runningMeanName, runningVarName, batchesTrackedName: String
    public let channels: Int
    public let eps, momentum: Float

    public init(_ prefix: String, in layout: inout ParameterLayout, channels: Int, eps: Float = 1e-5,
                momentum: Float = 0.1) {
        self.channels = channels; self.eps = eps; self.momentum = momentum
        weightName = parameterName(prefix, "weight"); biasName = parameterName(prefix, "bias")
        runningMeanName = parameterName(prefix, "running_mean"); runningVarName = parameterName(prefix, "running_var")
        batchesTrackedName = parameterName(prefix, "num_batches_tracked")
        layout.add(weightName, [channels])
        layout.add(biasName, [channels])
        layout.add(runningMeanName, [channels], trainable: false)
        layout.add(runningVarName, [channels], trainable: false)
        layout.add(batchesTrackedName, [], trainable: false)
    }

    public func outputShape(_ input: [Int]) -> [Int] {
        precondition(input.count == 4 && input[1] == channels, "\(weightName): input \(input), expected C \(channels)")
        return input
    }

    /// Saved: the (mean, rstd) used per channel, (2, C).
    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        let shape = outputShape(input.shape)
        let batch = shape[0], plane = shape[2] * shape[3], c = channels, n = batch * plane
        let out = Tensor(shape), stats = Tensor([2, c])
        let w = params.value(weightName).baseAddress!, b = params.value(biasName).baseAddress!
        let runMean = params.value(runningMeanName).baseAddress!, runVar = params.value(runningVarName).baseAddress!
        if training { precondition(n > 1, "\(weightName): batch statistics need more than one value per channel") }
        let x = input.data, y = out.data
        Parallel.forRanges(c) { chans in
            for ch in chans {
                var m: Float, v: Float
                if training {
                    var sum: Double = 0
                    for image in 0..<batch { let xc = x + (image * c + ch) * plane; for p in 0..<plane { sum += Double(xc[p]) } }
                    let mean = sum / Double(n)
                    var sq: Double = 0
                    for image in 0..<batch {
                        let xc = x + (image * c + ch) * plane
                        for p in 0..<plane { let d = Double(xc[p]) - mean; sq += d * d }
                    }
                    m = Float(mean); v = Float(sq / Double(n))
                    runMean[ch] = (1 - momentum) * runMean[ch] + momentum * m
                    runVar[ch] = (1 - momentum) * runVar[ch] + momentum * Float(sq / Double(n - 1))
                } else {
                    m = runMean[ch]; v = runVar[ch]
                }
                let r = 1 / (v + eps).squareRoot()
                stats[ch] = m; stats[c + ch] = r
                let scale = r * w[ch], shift = b[ch] - m * scale
                for image in 0..<batch {
                    let at = (image * c + ch) * plane
                    for p in 0..<plane { y[at + p] = x[at + p] * scale + shift }
                }
            }
        }
        if training { params.value(batchesTrackedName)[0] += 1 }
        return LayerTrace(input: input, output: out, saved: [stats], training: training)
    }

    /// dWeight += sum dOut xhat, dBias += sum dOut; dx = weight rstd (dOut - mean dOut - xhat mean(dOut xhat))
    /// in training (batch statistics), weight rstd dOut in evaluation.
    public func backward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        let shape = trace.input.shape
        let batch = shape[0], plane = shape[2] * shape[3], c = channels, n = Float(batch * plane)
        let stats = trace.saved[0], training = trace.training
        let x = trace.input.data, g = dOut.data, dx = dInput?.data
        let w = params.value(weightName).baseAddress!
        let dW = params.grad(weightName).baseAddress!, dB = params.grad(biasName).baseAddress!
        Parallel.forRanges(c) { chans in
            for ch in chans {
                let m = stats[ch], r = stats[c + ch]
                var sumG: Float = 0, sumGX: Float = 0
                for image in 0..<batch {
                    let at = (image * c + ch) * plane
                    for p in 0..<plane { sumG += g[at + p]; sumGX += g[at + p] * (x[at + p] - m) * r }
                }
                dW[ch] += sumGX; dB[ch] += sumG
                guard let dx else { continue }
                let k = w[ch] * r
                let meanG = training ? sumG / n : 0, meanGX = training ? sumGX / n : 0
                for image in 0..<batch {
                    let at = (image * c + ch) * plane
                    for p in 0..<plane { dx[at + p] += k * (g[at + p] - meanG - (x[at + p] - m) * r * meanGX) }
                }
            }
        }
    }

    public func initialize(_ params: ParameterStore, rng: inout RandomStream) {
        params.value(weightName).update(repeating: 1)
        params.value(biasName).update(repeating: 0)
        params.value(runningMeanName).update(repeating: 0)
        params.value(runningVarName).update(repeating: 1)
        params.value(batchesTrackedName).update(repeating: 0)
    }
}
