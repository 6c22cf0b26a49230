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
        let w = params.read(weightName), b = params.read(biasName)
        let x = input.data, y = out.data
        let invC = 1 / Float(c)
        // Each worker takes a run of pixels; the channel loop is outermost so the pixel loop is contiguous.
        // The run goes in blocks of 512 pixels, so the block's C x 512 inputs stay in L2 across the
        // three passes (whole runs streamed each pass from memory: 256 channels at 256 x 256 px are 64 MB).
        forPixelRuns(batch: batch, plane: plane) { image, run in
            let base = image * c * plane, m = mean.data + image * plane, r = rstd.data + image * plane
            for start in stride(from: run.lowerBound, to: run.upperBound, by: 512) {
                let pixels = start..<min(start + 512, run.upperBound)
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
        let w = params.read(weightName)
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

    /// Saved: the (mean, rstd) used per channel, (2, C); under SyncBN also this rank's share of the
    /// batch's elements (1).
    public func forward(_ input: Tensor, _ params: ParameterStore, training: Bool) -> LayerTrace {
        if training, let ranks = SyncBatchNorm.ranks { return synchronizedForward(input, params, ranks: ranks) }
        let shape = outputShape(input.shape)
        let batch = shape[0], plane = shape[2] * shape[3], c = channels, n = batch * plane
        let out = Tensor(shape), stats = Tensor([2, c])
        let w = params.read(weightName), b = params.read(biasName)
        // Written in training only, where `value(batchesTrackedName)` below marks the store changed;
        // evaluation only reads them, so the store's bf16 weight copies stay valid.
        let runMean = UnsafeMutablePointer(mutating: params.read(runningMeanName))
        let runVar = UnsafeMutablePointer(mutating: params.read(runningVarName))
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
        if trace.saved.count == 2 { return synchronizedBackward(trace, dOut: dOut, dInput: dInput, params) }
        let shape = trace.input.shape
        let batch = shape[0], plane = shape[2] * shape[3], c = channels, n = Float(batch * plane)
        let stats = trace.saved[0], training = trace.training
        let x = trace.input.data, g = dOut.data, dx = dInput?.data
        let w = params.read(weightName)
        channelGradientSums(trace, dOut: dOut, params) { ch, sumG, sumGX in
            guard let dx else { return }
            let m = stats[ch], r = stats[c + ch], k = w[ch] * r
            let meanG = training ? sumG / n : 0, meanGX = training ? sumGX / n : 0
            for image in 0..<batch {
                let at = (image * c + ch) * plane
                for p in 0..<plane { dx[at + p] += k * (g[at + p] - meanG - (x[at + p] - m) * r * meanGX) }
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

// MARK: - SyncBN

/// torch.nn.SyncBatchNorm for every `BatchNorm2d` in training mode: while `ranks` is bound (a
/// data-parallel task binds it around its training loop), each rank's batch is its rows of one
/// global batch, and the layer normalises with the global batch's statistics and backpropagates
/// as one process would on the whole batch. Unbound (one process, evaluation), nothing changes.
public enum SyncBatchNorm {
    /// The ranks whose batches are one; nil: this process's batch alone.
    @TaskLocal public static var ranks: RankSum?
}

extension BatchNorm2d {
    /// Forward with the global batch's statistics: per channel this rank's sum and sum of squares
    /// (double) and its element count are summed over the ranks (one call of 2C + 1 values); mean
    /// and biased variance normalise, the unbiased variance N / (N - 1) enters the running
    /// statistics (SyncBatchNorm's batch_norm_gather_stats_with_counts).
    func synchronizedForward(_ input: Tensor, _ params: ParameterStore, ranks: RankSum) -> LayerTrace {
        let shape = outputShape(input.shape)
        let batch = shape[0], plane = shape[2] * shape[3], c = channels, local = batch * plane
        let x = input.data
        var sums = [Double](repeating: 0, count: 2 * c + 1)
        sums.withUnsafeMutableBufferPointer { s in
            Parallel.forRanges(c) { chans in
                for ch in chans {
                    var sum: Double = 0, squares: Double = 0
                    for image in 0..<batch {
                        let xc = x + (image * c + ch) * plane
                        for p in 0..<plane { let v = Double(xc[p]); sum += v; squares += v * v }
                    }
                    s[ch] = sum; s[c + ch] = squares
                }
            }
        }
        sums[2 * c] = Double(local)
        ranks.sumOverRanks(&sums)
        let global = sums, n = global[2 * c]
        precondition(n > 1, "\(weightName): batch statistics need more than one value per channel")
        let out = Tensor(shape), stats = Tensor([2, c])
        let w = params.read(weightName), b = params.read(biasName)
        // Written in training only, where `value(batchesTrackedName)` below marks the store changed;
        // evaluation only reads them, so the store's bf16 weight copies stay valid.
        let runMean = UnsafeMutablePointer(mutating: params.read(runningMeanName))
        let runVar = UnsafeMutablePointer(mutating: params.read(runningVarName))
        let y = out.data
        Parallel.forRanges(c) { chans in
            for ch in chans {
                let mean = global[ch] / n, variance = max(global[c + ch] / n - mean * mean, 0)
                let m = Float(mean), r = 1 / (Float(variance) + eps).squareRoot()
                runMean[ch] = (1 - momentum) * runMean[ch] + momentum * m
                runVar[ch] = (1 - momentum) * runVar[ch] + momentum * Float(variance * n / (n - 1))
                stats[ch] = m; stats[c + ch] = r
                let scale = r * w[ch], shift = b[ch] - m * scale
                for image in 0..<batch {
                    let at = (image * c + ch) * plane
                    for p in 0..<plane { y[at + p] = x[at + p] * scale + shift }
                }
            }
        }
        params.value(batchesTrackedName)[0] += 1
        let share = Tensor([1])
        share[0] = Float(Double(local) / n)
        return LayerTrace(input: input, output: out, saved: [stats, share], training: true)
    }

    /// Per channel, in parallel over channels: sum dOut and sum dOut xhat over the trace's (B, H, W)
    /// (xhat from the saved mean and rstd), added into dBias and dWeight and handed to `each(channel,
    /// sumG, sumGX)`.
    private func channelGradientSums(_ trace: LayerTrace, dOut: Tensor, _ params: ParameterStore,
                                     _ each: (Int, Float, Float) -> Void) {
        let shape = trace.input.shape
        let batch = shape[0], plane = shape[2] * shape[3], c = channels
        let stats = trace.saved[0], x = trace.input.data, g = dOut.data
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
                each(ch, sumG, sumGX)
            }
        }
    }

    /// Backward of `synchronizedForward`. This rank's dOut is the gradient of its shard's mean loss,
    /// which the data-parallel step weights by the rank's share s = n_r / N of the batch; so per
    /// channel s sum dOut and s sum dOut xhat are summed over the ranks (one call of 2C values,
    /// SyncBatchNorm's backward) into the global batch's sums G, GX, and
    /// dx = weight rstd (dOut - G / n_r - xhat GX / n_r), which, weighted by s, is the global
    /// batch's gradient. dWeight += sum dOut xhat and dBias += sum dOut stay this rank's (the step
    /// weights and sums them with every gradient). No input gradient asked: no reduction.
    func synchronizedBackward(_ trace: LayerTrace, dOut: Tensor, dInput: Tensor?, _ params: ParameterStore) {
        let shape = trace.input.shape
        let batch = shape[0], plane = shape[2] * shape[3], c = channels, local = Float(batch * plane)
        let stats = trace.saved[0], share = Double(trace.saved[1][0])
        let x = trace.input.data, g = dOut.data
        let w = params.read(weightName)
        var sums = [Double](repeating: 0, count: 2 * c)
        sums.withUnsafeMutableBufferPointer { s in
            channelGradientSums(trace, dOut: dOut, params) { ch, sumG, sumGX in
                s[ch] = Double(sumG) * share; s[c + ch] = Double(sumGX) * share
            }
        }
        guard let dx = dInput?.data else { return }
        guard let ranks = SyncBatchNorm.ranks else {
            preconditionFailure("\(weightName): a SyncBN forward's backward ran without SyncBatchNorm.ranks bound")
        }
        ranks.sumOverRanks(&sums)
        let global = sums
        Parallel.forRanges(c) { chans in
            for ch in chans {
                let m = stats[ch], r = stats[c + ch], k = w[ch] * r
                let meanG = Float(global[ch]) / local, meanGX = Float(global[c + ch]) / local
                for image in 0..<batch {
                    let at = (image * c + ch) * plane
                    for p in 0..<plane { dx[at + p] += k * (g[at + p] - meanG - (x[at + p] - m) * r * meanGX) }
                }
            }
        }
    }
}
