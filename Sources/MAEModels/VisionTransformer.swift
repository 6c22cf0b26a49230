import MAEFormats
import MAEKernels

/// MAE's Vision Transformer in all its forms, driven by its config:
/// - a backbone (`numClasses == 0`): features for probes and extraction;
/// - a classifier (`numClasses > 0`): cls token + `norm` + `head`, or patch-token mean + `fc_norm` + `head`;
/// - an MAE pretraining model (`decoder != nil`): masked encoder, light decoder, per-patch pixel loss.
/// The forward is split into MAE's named stages; each keeps what its backward needs.
public final class VisionTransformer {
    public let config: ViTConfig
    public let params: ParameterStore
    /// Backward stops at this encoder block: the blocks below it, the patch embedding and the tokens
    /// get no gradient (partial fine-tuning, paper Fig. 9, without paying for the frozen part).
    public var lowestTrainedBlock = 0
    /// Stochastic depth rate of the last encoder block (0 disables drop path).
    public var dropPath: Float {
        get { encoder.dropPath }
        set { encoder.dropPath = newValue }
    }

    // Parameter offsets.
    let clsToken, posEmbed, patchW, patchB: Int
    /// DeiT's distillation token (distilled models only).
    let distToken: Int?
    let encoder: TransformerStack
    let norm: (w: Int, b: Int)?
    let fcNorm: (w: Int, b: Int)?
    let head: (w: Int, b: Int)?
    let decoder: Decoder?

    struct Decoder {
        let config: DecoderConfig
        let embedW, embedB, maskToken, posEmbed: Int
        let stack: TransformerStack
        let normW, normB, predW, predB: Int
    }

    /// State of the last forward, for the backward.
    private var batch = 0
    private var training = false
    private var mask: PatchMask?
    private var patches = Tensor([0])        // (B*Lk, C*P*P) gathered in conv-weight order
    private var tokens = Tensor([0])         // (B,N,D) encoder output before the final norm
    private var latent = Tensor([0])         // (B,N,D) after the final norm (pretrain / cls pooling)
    private var normStats = (mean: Tensor([0]), rstd: Tensor([0]))
    private var pooled = Tensor([0])         // (B,D) mean of patch tokens (avg pooling)
    private var pooledNorm = Tensor([0])     // (B,D) after fc_norm
    private var pooledStats = (mean: Tensor([0]), rstd: Tensor([0]))
    private var features = Tensor([0])       // (B,D) what the head reads
    private var logits = Tensor([0])         // (B,K)
    private var probs = Tensor([0])          // (B,K)
    private var targets = Tensor([0])        // (B,K)
    private var dec = DecoderState()
    /// Gradient and staging buffers reused across steps (fresh multi-MB allocations page-fault).
    private var scratch: [String: Tensor] = [:]
    private var rng = RandomStream(seed: 0)

    private struct DecoderState {
        var embedded = Tensor([0])           // (B,1+Lk,Dd) decoder_embed(latent)
        var normed = Tensor([0])             // (B,1+L,Dd) after decoder_norm
        var stats = (mean: Tensor([0]), rstd: Tensor([0]))
        var output = Tensor([0])             // (B,1+L,Dd) decoder stack output
        var predFull = Tensor([0])           // (B,1+L,P*P*C)
        var target = Tensor([0])             // (B,L,P*P*C) normalised target
    }

    public init(config: ViTConfig) throws {
        try config.validate()
        self.config = config
        let d = config.embedDim
        let layout = config.parameterLayout()
        let at = { (name: String) in layout.offset(name)! }
        clsToken = at("cls_token")
        distToken = layout.offset("dist_token")
        posEmbed = at("pos_embed")
        patchW = at("patch_embed.proj.weight")
        patchB = at("patch_embed.proj.bias")
        encoder = TransformerStack(layout, prefix: "blocks", depth: config.depth, width: d,
                                   hidden: config.mlpHidden, heads: config.numHeads)
        norm = layout.offset("norm.weight").map { ($0, at("norm.bias")) }
        fcNorm = layout.offset("fc_norm.weight").map { ($0, at("fc_norm.bias")) }
        decoder = config.decoder.map { dc in
            Decoder(config: dc, embedW: at("decoder_embed.weight"), embedB: at("decoder_embed.bias"),
                    maskToken: at("mask_token"), posEmbed: at("decoder_pos_embed"),
                    stack: TransformerStack(layout, prefix: "decoder_blocks", depth: dc.depth, width: dc.embedDim,
                                            hidden: dc.mlpHidden, heads: dc.numHeads),
                    normW: at("decoder_norm.weight"), normB: at("decoder_norm.bias"),
                    predW: at("decoder_pred.weight"), predB: at("decoder_pred.bias"))
        }
        head = layout.offset("head.weight").map { ($0, at("head.bias")) }
        try Self.checkParameterMemory(config, count: layout.totalCount)
        params = ParameterStore(layout: layout)
    }

    // MARK: - Encoder

    /// forward_encoder: images (B,C,H,W), already normalised, -> tokens (B,T+Lk,D) after the final
    /// `norm` when the model has one (else before it); T prefix tokens (cls, plus dist for DeiT
    /// distilled) come first. `mask` selects the visible patches (nil: all).
    @discardableResult
    public func forwardEncoder(images: UnsafePointer<Float>, batch b: Int, mask m: PatchMask? = nil,
                               training t: Bool = false, seed: UInt64 = 0) -> UnsafeMutablePointer<Float> {
        let c = config, d = c.embedDim, l = c.numPatches, p = c.patchSize
        let m = m ?? PatchMask.none(batch: b, numPatches: l)
        precondition(m.batch == b && m.numPatches == l, "mask does not match the batch")
        batch = b; training = t; mask = m
        rng = RandomStream(seed: seed)
        let t0 = c.numPrefixTokens, lk = m.keepCount, n = t0 + lk, cpp = c.inChans * p * p
        // patch_embed on the visible patches only.
        patches = reuse(patches, [b * lk, cpp])
        let pd = patches.data
        gatherPatches(pd, images: images, patchIndices: m.keep, perImage: lk)
        let x0 = encoder.input(batch: b, tokens: n, training: t)
        let emb = buffer("embedding", [b * lk, d])
        linearForward(out: emb.data, input: pd, weight: params.v(patchW), bias: params.v(patchB),
                      rows: b * lk, inDim: cpp, outDim: d)
        let cls = params.v(clsToken), dist = distToken.map { params.v($0) }, pos = params.v(posEmbed)
        for bi in 0..<b {
            let row0 = x0 + bi * n * d
            for i in 0..<d { row0[i] = cls[i] + pos[i] }
            if let dist { for i in 0..<d { row0[d + i] = dist[i] + pos[d + i] } }
            for j in 0..<lk {
                let patch = m.keep[bi * lk + j]
                let dst = row0 + (t0 + j) * d, src = emb.data + (bi * lk + j) * d, pe = pos + (t0 + patch) * d
                for i in 0..<d { dst[i] = src[i] + pe[i] }
            }
        }
        let out = encoder.forward(params, rng: &rng)
        tokens = reuse(tokens, [b, n, d])
        tokens.data.update(from: out, count: b * n * d)
        guard let norm else { return tokens.data }
        latent = reuse(latent, [b, n, d])
        normStats = (reuse(normStats.mean, [b * n]), reuse(normStats.rstd, [b * n]))
        layerNormForward(out: latent.data, mean: normStats.mean.data, rstd: normStats.rstd.data, input: tokens.data,
                         weight: params.v(norm.w), bias: params.v(norm.b), rows: b * n, width: d)
        return latent.data
    }

    /// Block i's output tokens (B,N,D), before the final norm, from the last `forwardEncoder` run in
    /// training mode (inference reuses two buffers, so only training mode keeps every block's output).
    /// Probes read the last k blocks this way (DINO's get_intermediate_layers).
    public func encoderBlockOutput(_ i: Int) -> Tensor {
        precondition(training && (0..<config.depth).contains(i), "block outputs need a training-mode forward")
        return encoder.blockOutput(i)
    }

    /// Patch embedding alone (before pos_embed), all patches: images (B,C,H,W) -> (B,L,D).
    public func patchEmbedding(images: UnsafePointer<Float>, batch b: Int) -> Tensor {
        let c = config, l = c.numPatches, cpp = c.inChans * c.patchSize * c.patchSize
        let cols = Tensor([b * l, cpp])
        gatherPatches(cols.data, images: images, patchIndices: (0..<(b * l)).map { $0 % l }, perImage: l)
        let out = Tensor([b, c.numPatches, c.embedDim])
        linearForward(out: out.data, input: cols.data, weight: params.v(patchW), bias: params.v(patchB),
                      rows: b * c.numPatches, inDim: cpp, outDim: c.embedDim)
        return out
    }

    /// The patches named by `patchIndices` ((B, perImage) indices into the G*G grid) of images
    /// (B,C,H,W), each flattened in conv-weight order (c, p, q): out (B*perImage, C*P*P), so the patch
    /// embedding (a stride-P convolution) is one linear layer over them.
    private func gatherPatches(_ out: UnsafeMutablePointer<Float>, images: UnsafePointer<Float>,
                               patchIndices: [Int], perImage: Int) {
        let c = config, p = c.patchSize, g = c.gridSize, s = c.imgSize, cpp = c.inChans * p * p
        Parallel.forEach(patchIndices.count) { row in
            let bi = row / perImage, patch = patchIndices[row], gy = patch / g, gx = patch % g
            let dst = out + row * cpp
            for ch in 0..<c.inChans {
                for py in 0..<p {
                    let src = images + ((bi * c.inChans + ch) * s + gy * p + py) * s + gx * p
                    (dst + (ch * p + py) * p).update(from: src, count: p)
                }
            }
        }
    }

    /// Backward of `forwardEncoder`: dOut (B,1+Lk,D) is the gradient of what it returned.
    func backwardEncoder(_ dOut: UnsafeMutablePointer<Float>) {
        let c = config, d = c.embedDim, b = batch, m = mask!, t0 = c.numPrefixTokens, lk = m.keepCount, n = t0 + lk
        var dTokens = dOut
        if let norm {
            let t = buffer("dTokens", [b * n, d])
            layerNormBackward(dInput: t.data, dWeight: params.g(norm.w), dBias: params.g(norm.b), dOut: dOut,
                              input: tokens.data, weight: params.v(norm.w), mean: normStats.mean.data,
                              rstd: normStats.rstd.data, rows: b * n, width: d)
            dTokens = t.data
        }
        let dx0 = encoder.backward(params, dOut: dTokens, lowest: lowestTrainedBlock)
        guard lowestTrainedBlock == 0 else { return }
        // Scatter into cls_token (and dist_token), pos_embed (when learnable) and the patch embedding's output.
        let posTrainable = params.specs.first { $0.offset == posEmbed }!.trainable
        let dCls = params.g(clsToken), dDist = distToken.map { params.g($0) }, dPos = params.g(posEmbed)
        let dEmb = buffer("dEmbedding", [b * lk, d])
        for bi in 0..<b {
            let row0 = dx0 + bi * n * d
            for i in 0..<d { dCls[i] += row0[i] }
            if let dDist { for i in 0..<d { dDist[i] += row0[d + i] } }
            if posTrainable { for i in 0..<(t0 * d) { dPos[i] += row0[i] } }
            for j in 0..<lk {
                let src = row0 + (t0 + j) * d
                (dEmb.data + (bi * lk + j) * d).update(from: src, count: d)
                if posTrainable {
                    let pe = dPos + (t0 + m.keep[bi * lk + j]) * d
                    for i in 0..<d { pe[i] += src[i] }
                }
            }
        }
        let cpp = c.inChans * c.patchSize * c.patchSize
        linearBackward(dInput: nil, dWeight: params.g(patchW), dBias: params.g(patchB), dOut: dEmb.data,
                       input: patches.data, weight: params.v(patchW), rows: b * lk, inDim: cpp, outDim: d)
    }

    // MARK: - Classification

    /// Pooled features (B,D): the cls token after `norm`, or the patch-token mean after `fc_norm`.
    /// `avgWithoutFcNorm` gives the mean of normed patch tokens for backbones with a final `norm`.
    public func forwardFeatures(images: UnsafePointer<Float>, batch b: Int, pooling: Pooling? = nil,
                                training t: Bool = false, seed: UInt64 = 0) -> UnsafeMutablePointer<Float> {
        let out = forwardEncoder(images: images, batch: b, training: t, seed: seed)
        let d = config.embedDim, t0 = config.numPrefixTokens, n = t0 + config.numPatches
        features = reuse(features, [b, d])
        switch pooling ?? config.pooling {
        case .cls:
            for bi in 0..<b { (features.data + bi * d).update(from: out + bi * n * d, count: d) }
        case .avg:
            pooled = reuse(pooled, [b, d])
            meanTokensForward(out: pooled.data, input: out, batch: b, tokens: n, width: d, from: t0)
            if let fcNorm {
                pooledStats = (reuse(pooledStats.mean, [b]), reuse(pooledStats.rstd, [b]))
                layerNormForward(out: features.data, mean: pooledStats.mean.data, rstd: pooledStats.rstd.data,
                                 input: pooled.data, weight: params.v(fcNorm.w), bias: params.v(fcNorm.b),
                                 rows: b, width: d)
            } else {
                features.copy(from: pooled)
            }
        }
        return features.data
    }

    /// Classifier forward: logits (B,K).
    public func forwardLogits(images: UnsafePointer<Float>, batch b: Int, training t: Bool = false,
                              seed: UInt64 = 0) -> Tensor {
        guard let head else { preconditionFailure("the model has no classification head") }
        let f = forwardFeatures(images: images, batch: b, training: t, seed: seed)
        logits = reuse(logits, [b, config.numClasses])
        linearForward(out: logits.data, input: f, weight: params.v(head.w), bias: params.v(head.b),
                      rows: b, inDim: config.embedDim, outDim: config.numClasses)
        return logits
    }

    /// Cross-entropy of the last logits against target distributions (B,K); returns the mean loss.
    public func classificationLoss(targets t: [Float]) -> Float {
        let b = batch, k = config.numClasses
        precondition(t.count == b * k, "targets must be (B,K)")
        targets = Tensor([b, k], t)
        probs = reuse(probs, [b, k])
        return crossEntropyForward(probs: probs.data, logits: logits.data, targets: targets.data, rows: b, classes: k)
    }

    /// Backward from the classification loss into every parameter gradient (accumulating).
    public func backwardClassification() {
        let b = batch, k = config.numClasses, d = config.embedDim, t0 = config.numPrefixTokens, n = t0 + mask!.keepCount
        let head = head!
        let dLogits = Tensor([b, k])
        crossEntropyBackward(dLogits: dLogits.data, probs: probs.data, targets: targets.data, rows: b, classes: k)
        let dFeatures = Tensor([b, d])
        linearBackward(dInput: dFeatures.data, dWeight: params.g(head.w), dBias: params.g(head.b), dOut: dLogits.data,
                       input: features.data, weight: params.v(head.w), rows: b, inDim: d, outDim: k)
        let dOut = buffer("dEncoderOut", [b, n, d])
        switch config.pooling {
        case .cls:
            for bi in 0..<b { (dOut.data + bi * n * d).update(from: dFeatures.data + bi * d, count: d) }
        case .avg:
            var dPooled = dFeatures
            if let fcNorm {
                dPooled = Tensor([b, d])
                layerNormBackward(dInput: dPooled.data, dWeight: params.g(fcNorm.w), dBias: params.g(fcNorm.b),
                                  dOut: dFeatures.data, input: pooled.data, weight: params.v(fcNorm.w),
                                  mean: pooledStats.mean.data, rstd: pooledStats.rstd.data, rows: b, width: d)
            }
            meanTokensBackward(dInput: dOut.data, dOut: dPooled.data, batch: b, tokens: n, width: d, from: t0)
        }
        backwardEncoder(dOut.data)
    }

    // MARK: - MAE pretraining

    /// forward_decoder: latent (B,1+Lk,D) from `forwardEncoder` -> pred (B,L,P*P*C).
    public func forwardDecoder() -> Tensor {
        guard let dcd = decoder, let m = mask else { preconditionFailure("forwardDecoder needs a decoder and a mask") }
        let b = batch, d = config.embedDim, dd = dcd.config.embedDim, l = config.numPatches, lk = m.keepCount
        let nIn = 1 + lk, nOut = 1 + l, pd = config.patchDim
        dec.embedded = reuse(dec.embedded, [b, nIn, dd])
        linearForward(out: dec.embedded.data, input: latent.data, weight: params.v(dcd.embedW),
                      bias: params.v(dcd.embedB), rows: b * nIn, inDim: d, outDim: dd)
        // Append mask tokens, unshuffle to patch order, add the decoder's position embedding.
        let x = dcd.stack.input(batch: b, tokens: nOut, training: training)
        let y = dec.embedded.data, mt = params.v(dcd.maskToken), pos = params.v(dcd.posEmbed)
        for bi in 0..<b {
            let dst0 = x + bi * nOut * dd, src0 = y + bi * nIn * dd
            for i in 0..<dd { dst0[i] = src0[i] + pos[i] }
            for patch in 0..<l {
                let rank = m.idsRestore[bi * l + patch]
                let src = rank < lk ? src0 + (1 + rank) * dd : mt
                let dst = dst0 + (1 + patch) * dd, pe = pos + (1 + patch) * dd
                for i in 0..<dd { dst[i] = src[i] + pe[i] }
            }
        }
        let out = dcd.stack.forward(params, rng: &rng)
        dec.output = reuse(dec.output, [b, nOut, dd])
        dec.output.data.update(from: out, count: b * nOut * dd)
        dec.normed = reuse(dec.normed, [b, nOut, dd])
        dec.stats = (reuse(dec.stats.mean, [b * nOut]), reuse(dec.stats.rstd, [b * nOut]))
        layerNormForward(out: dec.normed.data, mean: dec.stats.mean.data, rstd: dec.stats.rstd.data,
                         input: out, weight: params.v(dcd.normW), bias: params.v(dcd.normB),
                         rows: b * nOut, width: dd)
        dec.predFull = reuse(dec.predFull, [b, nOut, pd])
        linearForward(out: dec.predFull.data, input: dec.normed.data, weight: params.v(dcd.predW),
                      bias: params.v(dcd.predB), rows: b * nOut, inDim: dd, outDim: pd)
        let pred = Tensor([b, l, pd])
        for bi in 0..<b {
            (pred.data + bi * l * pd).update(from: dec.predFull.data + (bi * nOut + 1) * pd, count: l * pd)
        }
        return pred
    }

    /// forward_loss: mean squared error on the removed patches only, against per-patch normalised
    /// pixels when normPixLoss ((t - mean) / sqrt(var + 1e-6), unbiased var as torch.var).
    public func forwardLoss(images: UnsafePointer<Float>, pred: Tensor) -> Float {
        let b = batch, l = config.numPatches, pd = config.patchDim, m = mask!
        dec.target = reuse(dec.target, [b, l, pd])
        let t = dec.target.data
        patchify(t, images: images, batch: b, channels: config.inChans, imgSize: config.imgSize, patch: config.patchSize)
        // Per-patch normalisation and squared error, rows split over the workers; the per-row
        // errors are summed in row order afterwards so the loss does not depend on the split.
        let normalise = config.normPixLoss
        var rowError = [Double](repeating: 0, count: b * l)
        rowError.withUnsafeMutableBufferPointer { errors in
            Parallel.forEach(b * l, grain: 16) { row in
                let x = t + row * pd
                if normalise {
                    var mean: Double = 0
                    for i in 0..<pd { mean += Double(x[i]) }
                    mean /= Double(pd)
                    var v: Double = 0
                    for i in 0..<pd { v += (Double(x[i]) - mean) * (Double(x[i]) - mean) }
                    let rstd = 1 / (v / Double(pd - 1) + 1e-6).squareRoot()
                    for i in 0..<pd { x[i] = Float((Double(x[i]) - mean) * rstd) }
                }
                guard m.mask[row] != 0 else { return }
                var sum: Double = 0
                for i in 0..<pd { let e = Double(pred.data[row * pd + i] - x[i]); sum += e * e }
                errors[row] = sum / Double(pd) * Double(m.mask[row])
            }
        }
        let total = rowError.reduce(0, +), removed = m.mask.reduce(0) { $0 + Double($1) }
        return Float(total / max(removed, 1))
    }

    /// Backward of loss(pred) through the decoder and the encoder into every gradient (accumulating).
    public func backwardPretrain(pred: Tensor) {
        guard let dcd = decoder, let m = mask else { preconditionFailure("backwardPretrain needs a decoder") }
        let b = batch, d = config.embedDim, dd = dcd.config.embedDim, l = config.numPatches, lk = m.keepCount
        let nIn = 1 + lk, nOut = 1 + l, pd = config.patchDim
        let removed = max(m.mask.reduce(0, +), 1)
        // d loss / d pred: 2 (pred - target) / (P*P*C) on removed patches, over their count.
        let dPredFull = buffer("dPred", [b, nOut, pd])
        for bi in 0..<b {
            for patch in 0..<l where m.mask[bi * l + patch] != 0 {
                let scale = 2 * m.mask[bi * l + patch] / (Float(pd) * removed)
                let src = pred.data + (bi * l + patch) * pd, t = dec.target.data + (bi * l + patch) * pd
                let dst = dPredFull.data + (bi * nOut + 1 + patch) * pd
                for i in 0..<pd { dst[i] = scale * (src[i] - t[i]) }
            }
        }
        let dNormed = buffer("dDecoderNormed", [b, nOut, dd])
        linearBackward(dInput: dNormed.data, dWeight: params.g(dcd.predW), dBias: params.g(dcd.predB),
                       dOut: dPredFull.data, input: dec.normed.data, weight: params.v(dcd.predW),
                       rows: b * nOut, inDim: dd, outDim: pd)
        let dStackOut = buffer("dDecoderOut", [b, nOut, dd])
        layerNormBackward(dInput: dStackOut.data, dWeight: params.g(dcd.normW), dBias: params.g(dcd.normB),
                          dOut: dNormed.data, input: dec.output.data, weight: params.v(dcd.normW),
                          mean: dec.stats.mean.data, rstd: dec.stats.rstd.data, rows: b * nOut, width: dd)
        let dx = dcd.stack.backward(params, dOut: dStackOut.data)
        // Undo the unshuffle: kept positions flow to decoder_embed's output, the rest to mask_token.
        let dEmbedded = buffer("dDecoderIn", [b, nIn, dd])
        let dMask = params.g(dcd.maskToken)
        for bi in 0..<b {
            let src0 = dx + bi * nOut * dd, dst0 = dEmbedded.data + bi * nIn * dd
            for i in 0..<dd { dst0[i] += src0[i] }
            for patch in 0..<l {
                let rank = m.idsRestore[bi * l + patch], src = src0 + (1 + patch) * dd
                let dst = rank < lk ? dst0 + (1 + rank) * dd : dMask
                for i in 0..<dd { dst[i] += src[i] }
            }
        }
        let dLatent = buffer("dLatent", [b, nIn, d])
        linearBackward(dInput: dLatent.data, dWeight: params.g(dcd.embedW), dBias: params.g(dcd.embedB),
                       dOut: dEmbedded.data, input: latent.data, weight: params.v(dcd.embedW),
                       rows: b * nIn, inDim: d, outDim: dd)
        backwardEncoder(dLatent.data)
    }

    /// The scratch buffer `key` with `shape`, zero-filled, reused across calls.
    private func buffer(_ key: String, _ shape: [Int]) -> Tensor {
        if let t = scratch[key], t.shape == shape { t.zero(); return t }
        let t = Tensor(shape)
        scratch[key] = t
        return t
    }

    /// A tensor of `shape`, reusing `t` when it already has it.
    private func reuse(_ t: Tensor, _ shape: [Int]) -> Tensor { t.shape == shape ? t : Tensor(shape) }
}
