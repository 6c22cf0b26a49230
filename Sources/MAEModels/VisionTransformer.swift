import MAEFormats
import MAEKernels

/// MAE's Vision Transformer in all its forms, driven by its config:
/// - a backbone (`numClasses == 0`): features for probes and extraction;
/// - a classifier (`numClasses > 0`): cls token + `norm` + `head`, or patch-token mean + `fc_norm` + `head`;
/// - an MAE pretraining model (`decoder != nil`): masked encoder, light decoder, per-patch pixel loss.
/// The forward is split into MAE's named stages. Each stage returns a context (`EncoderContext`,
/// `FeaturesContext`, `DecoderContext`) holding what its backward needs; the model itself keeps
/// only parameters, settings and reusable buffers, so forwards do not clash.
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
    /// Which rows of the global batch the next training forwards hold (data parallelism): drop path
    /// draws its per-sample masks for all `total` rows and keeps these, so N ranks drop what one
    /// process would. nil: the forward's batch is the whole batch.
    public var batchShard: BatchShard? {
        get { encoder.batchShard }
        set { encoder.batchShard = newValue }
    }

    /// The arithmetic of every linear layer (patch embedding, qkv, proj, fc1, fc2, decoder embed/pred,
    /// head), forward and backward: `.bf16` multiplies bf16-rounded operands with fp32 accumulation
    /// (torch.autocast on CPU); norms, softmax, attention's products, GELU, losses and the master
    /// weights stay fp32. This is the library's precision option: every task (extract, probes, kNN,
    /// fine-tuning, bench, the dense tasks' backbone) sets it on the model it runs. Default `.fp32`.
    public var precision: Precision = .fp32 {
        didSet {
            encoder.precision = precision
            decoder?.stack.precision = precision
        }
    }

    /// The packed bf16 weights when the model runs in bf16, nil in fp32 (what the linear kernels take).
    private var bf16: BF16WeightCache? { precision == .bf16 ? params.bf16Weights : nil }

    /// Sequences of at least this many tokens run every stack's attention fused (no N x N probs kept;
    /// FlashAttention.swift), shorter ones materialised. Default 1024; tests lower it.
    public var fusedAttentionTokens: Int {
        get { encoder.fusedAttentionTokens }
        set {
            encoder.fusedAttentionTokens = newValue
            decoder?.stack.fusedAttentionTokens = newValue
        }
    }

    /// The prefix of every parameter name in `params` ("" for a model of its own; "backbone.net." for a
    /// ViTDet backbone inside a detector's store).
    public let prefix: String
    // Parameter offsets.
    let posEmbed, patchW, patchB: Int
    /// The cls token (every model but a ViTDet backbone).
    let clsToken: Int?
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

    /// Staging and gradient buffers reused across steps (fresh multi-MB allocations page-fault), each
    /// used within one call only, so any number of forwards' contexts may be in flight.
    private var scratch: [String: Tensor] = [:]

    /// A model with a store of its own, named by `config.parameterLayout()`.
    public convenience init(config: ViTConfig) throws {
        try config.validate()
        let layout = config.parameterLayout()
        try Self.checkParameterMemory(config, count: layout.totalCount)
        try self.init(config: config, store: ParameterStore(layout: layout), prefix: "")
    }

    /// A model over a store shared with other parts (a detector's backbone, pyramid and heads in one
    /// store, as its one training loop steps it): `store` must hold `config.addParameters(to:prefix:)`'s
    /// parameters under `prefix`.
    public init(config: ViTConfig, store: ParameterStore, prefix: String) throws {
        try config.validate()
        self.config = config
        self.prefix = prefix
        let d = config.embedDim
        let layout = store.layout
        var own = ParameterLayout()
        config.addParameters(to: &own, prefix: prefix)
        for spec in own.specs where store.spec(spec.name)?.shape != spec.shape {
            throw ModelError.shapeMismatch("the store has no parameter \(spec.name) of shape \(spec.shape)")
        }
        let at = { (name: String) in layout.offset(prefix + name)! }
        clsToken = layout.offset(prefix + "cls_token")
        distToken = layout.offset(prefix + "dist_token")
        posEmbed = at("pos_embed")
        patchW = at("patch_embed.proj.weight")
        patchB = at("patch_embed.proj.bias")
        encoder = TransformerStack(layout, prefix: prefix + "blocks", depth: config.depth, width: d,
                                   hidden: config.mlpHidden, heads: config.numHeads,
                                   windows: config.vitdet.map { v in (0..<config.depth).map { v.window(block: $0) } } ?? [],
                                   relPosBias: config.beit?.relPosBiasSize(heads: config.numHeads))
        norm = layout.offset(prefix + "norm.weight").map { ($0, at("norm.bias")) }
        fcNorm = layout.offset(prefix + "fc_norm.weight").map { ($0, at("fc_norm.bias")) }
        decoder = config.decoder.map { dc in
            Decoder(config: dc, embedW: at("decoder_embed.weight"), embedB: at("decoder_embed.bias"),
                    maskToken: at("mask_token"), posEmbed: at("decoder_pos_embed"),
                    stack: TransformerStack(layout, prefix: prefix + "decoder_blocks", depth: dc.depth, width: dc.embedDim,
                                            hidden: dc.mlpHidden, heads: dc.numHeads),
                    normW: at("decoder_norm.weight"), normB: at("decoder_norm.bias"),
                    predW: at("decoder_pred.weight"), predB: at("decoder_pred.bias"))
        }
        head = layout.offset(prefix + "head.weight").map { ($0, at("head.bias")) }
        params = store
    }

    // MARK: - Encoder

    /// forward_encoder for any input size, keeping the outputs of the blocks a head reads.
    /// images (B,C,H,W), already normalised, H and W multiples of the patch size (default img_size).
    /// The tokens are the T prefix tokens (cls, plus dist for DeiT distilled; none when `prefixTokens`
    /// is false, as ViTDet) then the visible patches (`mask`, nil: all, in grid order): N = T + Lk.
    /// pos_embed is the stored table on its own grid; on another grid its patch rows are resized
    /// bicubically in this forward (ViTDet's get_abs_pos, align_corners false), so the backward reaches
    /// the stored table; loading at the new img_size resizes once instead (mmseg, `loadModel`).
    /// `blocks`: block outputs (B,N,D), before the final norm, kept for `blockOutput`. `finalOutput`:
    /// run every block and give `output` (B,N,D), after the final `norm` when the model has one;
    /// without it the forward stops after the highest block asked for.
    public func forwardEncoder(images: UnsafePointer<Float>, batch b: Int, height: Int? = nil, width: Int? = nil,
                               mask: PatchMask? = nil, blocks: [Int] = [], finalOutput: Bool = true,
                               prefixTokens: Bool = true, training t: Bool = false, seed: UInt64 = 0) -> EncoderContext {
        let c = config, d = c.embedDim, p = c.patchSize, h = height ?? c.imgSize, w = width ?? c.imgSize
        precondition(h > 0 && w > 0 && h % p == 0 && w % p == 0, "\(h)x\(w) images are not whole \(p)-pixel patches")
        precondition(blocks.allSatisfy { (0..<c.depth).contains($0) }, "blocks \(blocks) of a \(c.depth)-block encoder")
        precondition(finalOutput || !blocks.isEmpty, "the forward returns nothing")
        let gh = h / p, gw = w / p, l = gh * gw
        let m = mask ?? PatchMask.none(batch: b, numPatches: l)
        precondition(m.batch == b && m.numPatches == l, "mask does not match the batch")
        var rng = RandomStream(seed: seed)
        let t0 = prefixTokens ? c.numPrefixTokens : 0, lk = m.keepCount, n = t0 + lk, cpp = c.inChans * p * p
        precondition(c.vitdet == nil || (t0 == 0 && lk == l), "a ViTDet backbone runs on all patches, without a cls token")
        precondition(c.beit?.relativePositionWindow.map { gh == $0 && gw == $0 && t0 == 1 && lk == l } ?? true,
                     "BEiT's relative position bias runs on the cls token and all patches of its window, not a \(gh)x\(gw) grid")
        // patch_embed on the visible patches only.
        let patches = Tensor([b * lk, cpp])
        let pd = patches.data
        gatherPatches(pd, images: images, height: h, width: w, patchIndices: m.keep, perImage: lk)
        let pass = encoder.begin(batch: b, tokens: n, training: t, grid: t0 == 0 && lk == l ? (gh, gw) : nil)
        let x0 = pass.input
        let emb = buffer("embedding", [b * lk, d])
        linearForward(out: emb.data, input: pd, weight: params.v(patchW), bias: params.v(patchB),
                      rows: b * lk, inDim: cpp, outDim: d, bf16: bf16)
        let position = positionRows(gridHeight: gh, gridWidth: gw, prefixTokens: t0)
        let cls = clsToken.map { params.v($0) }, dist = distToken.map { params.v($0) }, pos = position?.data ?? params.v(posEmbed)
        for bi in 0..<b {
            let row0 = x0 + bi * n * d
            if t0 > 0, let cls {
                for i in 0..<d { row0[i] = cls[i] + pos[i] }
                if let dist { for i in 0..<d { row0[d + i] = dist[i] + pos[d + i] } }
            }
            for j in 0..<lk {
                let patch = m.keep[bi * lk + j]
                let dst = row0 + (t0 + j) * d, src = emb.data + (bi * lk + j) * d, pe = pos + (t0 + patch) * d
                for i in 0..<d { dst[i] = src[i] + pe[i] }
            }
        }
        let out = encoder.forward(params, pass, through: finalOutput ? c.depth : blocks.max()! + 1, keep: Set(blocks),
                                  rng: &rng)
        var normed: EncoderContext.Normed?
        if finalOutput, let norm {
            let latent = Tensor([b, n, d]), mean = Tensor([b * n]), rstd = Tensor([b * n])
            layerNormForward(out: latent.data, mean: mean.data, rstd: rstd.data, input: out.data,
                             weight: params.v(norm.w), bias: params.v(norm.b), rows: b * n, width: d)
            normed = .init(output: latent, mean: mean, rstd: rstd)
        }
        return EncoderContext(batch: b, height: h, width: w, mask: m, prefixTokens: t0, blocks: blocks, stack: pass,
                              patches: patches, position: position, ranAll: finalOutput, normed: normed, rng: rng)
    }

    /// pos_embed rows (T + Gh*Gw, D) for a Gh x Gw grid with T prefix rows (all or none), or nil when
    /// that is the stored table itself. Another grid resizes the patch rows as MAE's
    /// interpolate_pos_embed does (`resizePositionEmbedding`): (D, G, G) -> (D, Gh, Gw), bicubic.
    private func positionRows(gridHeight gh: Int, gridWidth gw: Int, prefixTokens t0: Int) -> Tensor? {
        let c = config, g = c.gridSize, d = c.embedDim, tAll = c.numPrefixTokens, table = params.v(posEmbed)
        if gh == g && gw == g && t0 == tAll { return nil }
        let rows = Tensor([t0 + gh * gw, d])
        rows.data.update(from: table, count: t0 * d)
        if gh == g && gw == g {
            (rows.data + t0 * d).update(from: table + tAll * d, count: g * g * d)
            return rows
        }
        let grid = Tensor([1, d, g, g]), resized = Tensor([1, d, gh, gw])
        for l in 0..<(g * g) { for ch in 0..<d { grid[ch * g * g + l] = table[(tAll + l) * d + ch] } }
        resizeBicubicForward(out: resized.data, input: grid.data, size: positionResize(gridHeight: gh, gridWidth: gw),
                             alignCorners: false)
        for l in 0..<(gh * gw) { for ch in 0..<d { rows[(t0 + l) * d + ch] = resized[ch * gh * gw + l] } }
        return rows
    }

    /// Backward of `positionRows`: dRows (T + Gh*Gw, D) accumulated into pos_embed's gradient.
    private func accumulatePositionGradient(_ dRows: Tensor, gridHeight gh: Int, gridWidth gw: Int, prefixTokens t0: Int) {
        let c = config, g = c.gridSize, d = c.embedDim, tAll = c.numPrefixTokens, dTable = params.g(posEmbed)
        for i in 0..<(t0 * d) { dTable[i] += dRows[i] }
        if gh == g && gw == g {
            for i in 0..<(g * g * d) { dTable[tAll * d + i] += dRows[t0 * d + i] }
            return
        }
        let dResized = Tensor([1, d, gh, gw]), dGrid = Tensor([1, d, g, g])
        for l in 0..<(gh * gw) { for ch in 0..<d { dResized[ch * gh * gw + l] = dRows[(t0 + l) * d + ch] } }
        resizeBicubicBackward(dInput: dGrid.data, dOut: dResized.data, size: positionResize(gridHeight: gh, gridWidth: gw),
                              alignCorners: false)
        for l in 0..<(g * g) { for ch in 0..<d { dTable[(tAll + l) * d + ch] += dGrid[ch * g * g + l] } }
    }

    private func positionResize(gridHeight gh: Int, gridWidth gw: Int) -> Resample2dSize {
        let g = config.gridSize
        return Resample2dSize(batch: 1, channels: config.embedDim, height: g, width: g, outHeight: gh, outWidth: gw)
    }

    /// Patch embedding alone (before pos_embed), all patches: images (B,C,H,W) at img_size -> (B,L,D).
    public func patchEmbedding(images: UnsafePointer<Float>, batch b: Int) -> Tensor {
        let c = config, l = c.numPatches, cpp = c.inChans * c.patchSize * c.patchSize
        let cols = Tensor([b * l, cpp])
        gatherPatches(cols.data, images: images, height: c.imgSize, width: c.imgSize,
                      patchIndices: (0..<(b * l)).map { $0 % l }, perImage: l)
        let out = Tensor([b, c.numPatches, c.embedDim])
        linearForward(out: out.data, input: cols.data, weight: params.v(patchW), bias: params.v(patchB),
                      rows: b * c.numPatches, inDim: cpp, outDim: c.embedDim, bf16: bf16)
        return out
    }

    /// The patches named by `patchIndices` ((B, perImage) indices into the (H/P)x(W/P) grid, row-major)
    /// of images (B,C,H,W), each flattened in conv-weight order (c, p, q): out (B*perImage, C*P*P), so
    /// the patch embedding (a stride-P convolution) is one linear layer over them.
    private func gatherPatches(_ out: UnsafeMutablePointer<Float>, images: UnsafePointer<Float>, height h: Int,
                               width w: Int, patchIndices: [Int], perImage: Int) {
        let c = config, p = c.patchSize, gw = w / p, cpp = c.inChans * p * p
        Parallel.forEach(patchIndices.count) { row in
            let bi = row / perImage, patch = patchIndices[row], gy = patch / gw, gx = patch % gw
            let dst = out + row * cpp
            for ch in 0..<c.inChans {
                for py in 0..<p {
                    let src = images + ((bi * c.inChans + ch) * h + gy * p + py) * w + gx * p
                    (dst + (ch * p + py) * p).update(from: src, count: p)
                }
            }
        }
    }

    /// Backward of `forwardEncoder` from the gradients of what it returned: blockGradients[i] (B,N,D)
    /// for `ctx.blockOutput(i)`, outputGradient (B,N,D) for `ctx.output`. Parameter gradients
    /// accumulate, down to `lowestTrainedBlock` (the embedding and tokens only when it is 0; pos_embed
    /// only when learnable, through the in-forward resize when there was one). `inputGradient`: also
    /// returns the gradient of the images (B,C,H,W) (masked-out patches get 0); else returns nil.
    /// Contexts are independent: several may be backpropagated in any order, each once or more.
    @discardableResult
    public func backwardEncoder(_ ctx: EncoderContext, blockGradients: [Int: Tensor] = [:], outputGradient: Tensor? = nil,
                                inputGradient: Bool = false) -> Tensor? {
        let c = config, d = c.embedDim, b = ctx.batch, m = ctx.mask, t0 = ctx.prefixTokens, lk = m.keepCount, n = ctx.tokens
        precondition(!inputGradient || lowestTrainedBlock == 0, "the input gradient needs every block trained")
        var dOutputs: [Int: UnsafePointer<Float>] = [:]
        for (i, g) in blockGradients {
            precondition(ctx.blocks.contains(i) && g.count == b * n * d, "gradient \(g.shape) for block \(i) of \(ctx.blocks)")
            dOutputs[i] = UnsafePointer(g.data)
        }
        if let g = outputGradient {
            precondition(ctx.ranAll, "the forward gave no final output")
            precondition(g.count == b * n * d, "output gradient \(g.shape) for (\(b),\(n),\(d)) tokens")
            var dLast = UnsafePointer(g.data)
            if let norm, let normed = ctx.normed {
                let t = buffer("dTokens", [b * n, d])
                layerNormBackward(dInput: t.data, dWeight: params.g(norm.w), dBias: params.g(norm.b), dOut: g.data,
                                  input: ctx.stack.output(c.depth - 1).data, weight: params.v(norm.w), mean: normed.mean.data,
                                  rstd: normed.rstd.data, rows: b * n, width: d)
                dLast = UnsafePointer(t.data)
            }
            if let other = dOutputs[c.depth - 1] {
                let sum = buffer("dLastBlock", [b * n, d])
                addForward(out: sum.data, dLast, other, count: b * n * d)
                dLast = UnsafePointer(sum.data)
            }
            dOutputs[c.depth - 1] = dLast
        }
        guard let top = dOutputs.keys.max(), top >= lowestTrainedBlock else { return nil }
        let dx0 = encoder.backward(params, ctx.stack, dOutputs: dOutputs, lowest: lowestTrainedBlock)
        guard lowestTrainedBlock == 0 else { return nil }
        // Scatter into cls_token (and dist_token), pos_embed (when learnable) and the patch embedding's output.
        let posTrainable = params.specs.first { $0.offset == posEmbed }!.trainable
        let dRows = ctx.position.map { _ in buffer("dPosition", [t0 + m.numPatches, d]) }
        let dCls = clsToken.map { params.g($0) }, dDist = distToken.map { params.g($0) }, dPos = dRows?.data ?? params.g(posEmbed)
        let dEmb = buffer("dEmbedding", [b * lk, d])
        for bi in 0..<b {
            let row0 = dx0 + bi * n * d
            if t0 > 0, let dCls {
                for i in 0..<d { dCls[i] += row0[i] }
                if let dDist { for i in 0..<d { dDist[i] += row0[d + i] } }
            }
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
        if posTrainable, let dRows {
            accumulatePositionGradient(dRows, gridHeight: ctx.height / c.patchSize, gridWidth: ctx.width / c.patchSize,
                                       prefixTokens: t0)
        }
        let cpp = c.inChans * c.patchSize * c.patchSize
        let dPatches = inputGradient ? buffer("dPatches", [b * lk, cpp]) : nil
        linearBackward(dInput: dPatches?.data, dWeight: params.g(patchW), dBias: params.g(patchB), dOut: dEmb.data,
                       input: ctx.patches.data, weight: params.v(patchW), rows: b * lk, inDim: cpp, outDim: d, bf16: bf16)
        guard let dPatches else { return nil }
        let dImages = Tensor([b, c.inChans, ctx.height, ctx.width])
        scatterPatches(dImages.data, patches: dPatches.data, height: ctx.height, width: ctx.width,
                       patchIndices: m.keep, perImage: lk)
        return dImages
    }

    /// The adjoint of `gatherPatches`: adds each patch row of `patches` (B*perImage, C*P*P) back
    /// into its place in images (B,C,H,W).
    private func scatterPatches(_ images: UnsafeMutablePointer<Float>, patches: UnsafePointer<Float>, height h: Int,
                                width w: Int, patchIndices: [Int], perImage: Int) {
        let c = config, p = c.patchSize, gw = w / p, cpp = c.inChans * p * p
        Parallel.forEach(patchIndices.count) { row in
            let bi = row / perImage, patch = patchIndices[row], gy = patch / gw, gx = patch % gw
            let src = patches + row * cpp
            for ch in 0..<c.inChans {
                for py in 0..<p {
                    let dst = images + ((bi * c.inChans + ch) * h + gy * p + py) * w + gx * p
                    for q in 0..<p { dst[q] += src[(ch * p + py) * p + q] }
                }
            }
        }
    }

    // MARK: - Classification

    /// Pooled features (B, k*D) of the last `lastBlocks` (k) blocks, per image lowest block first:
    /// each block's cls token after `norm`, or its patch-token mean after `norm` (models with one) or
    /// after `fc_norm` (global-pool models). `pooling` defaults to the model's.
    public func forwardFeatures(images: UnsafePointer<Float>, batch b: Int, pooling: Pooling? = nil,
                                lastBlocks k: Int = 1, training t: Bool = false, seed: UInt64 = 0) -> FeaturesContext {
        let c = config, d = c.embedDim, pooling = pooling ?? c.pooling
        precondition((1...c.depth).contains(k), "last \(k) of \(c.depth) blocks")
        let enc = forwardEncoder(images: images, batch: b, blocks: Array((c.depth - k)..<c.depth), finalOutput: false,
                                 training: t, seed: seed)
        let slots = enc.blocks.map { poolBlock(enc.blockOutput($0), block: $0, pooling: pooling, batch: b, tokens: enc.tokens) }
        var features = slots[0].out
        if k > 1 {
            features = Tensor([b, k * d])
            for (slot, s) in slots.enumerated() {
                for bi in 0..<b { (features.data + (bi * k + slot) * d).update(from: s.out.data + bi * d, count: d) }
            }
        }
        return FeaturesContext(encoder: enc, pooling: pooling, features: features, slots: slots)
    }

    /// One block's feature (B,D) from its tokens (B,N,D), with what its backward reads.
    private func poolBlock(_ tokens: Tensor, block: Int, pooling: Pooling, batch b: Int, tokens n: Int) -> PooledBlock {
        let d = config.embedDim, t0 = config.numPrefixTokens, out = Tensor([b, d])
        if let norm {
            let normed = Tensor([b * n, d]), mean = Tensor([b * n]), rstd = Tensor([b * n])
            layerNormForward(out: normed.data, mean: mean.data, rstd: rstd.data, input: tokens.data,
                             weight: params.v(norm.w), bias: params.v(norm.b), rows: b * n, width: d)
            switch pooling {
            case .cls: for bi in 0..<b { (out.data + bi * d).update(from: normed.data + bi * n * d, count: d) }
            case .avg: meanTokensForward(out: out.data, input: normed.data, batch: b, tokens: n, width: d, from: t0)
            }
            return PooledBlock(block: block, out: out, stats: (mean, rstd), pooled: nil)
        }
        switch pooling {
        case .cls:
            for bi in 0..<b { (out.data + bi * d).update(from: tokens.data + bi * n * d, count: d) }
            return PooledBlock(block: block, out: out, stats: nil, pooled: nil)
        case .avg:
            let pooled = Tensor([b, d])
            meanTokensForward(out: pooled.data, input: tokens.data, batch: b, tokens: n, width: d, from: t0)
            guard let fcNorm else {
                out.copy(from: pooled)
                return PooledBlock(block: block, out: out, stats: nil, pooled: pooled)
            }
            let mean = Tensor([b]), rstd = Tensor([b])
            layerNormForward(out: out.data, mean: mean.data, rstd: rstd.data, input: pooled.data,
                             weight: params.v(fcNorm.w), bias: params.v(fcNorm.b), rows: b, width: d)
            return PooledBlock(block: block, out: out, stats: (mean, rstd), pooled: pooled)
        }
    }

    /// Backward of `forwardFeatures`: dFeatures (B, k*D) is the gradient of `ctx.features`.
    /// Parameter gradients accumulate (norm / fc_norm, then the encoder as `backwardEncoder`).
    public func backwardFeatures(_ ctx: FeaturesContext, dFeatures: Tensor) {
        let b = ctx.encoder.batch, n = ctx.encoder.tokens, d = config.embedDim, t0 = config.numPrefixTokens
        let k = ctx.slots.count
        precondition(dFeatures.count == b * k * d, "feature gradient \(dFeatures.shape) for (\(b),\(k * d))")
        var blockGradients: [Int: Tensor] = [:]
        for (slot, s) in ctx.slots.enumerated() {
            var dOut = dFeatures
            if k > 1 {
                dOut = buffer("dFeature", [b, d])
                for bi in 0..<b { (dOut.data + bi * d).update(from: dFeatures.data + (bi * k + slot) * d, count: d) }
            }
            let dTokens = buffer("dBlock\(slot)", [b, n, d])
            if let norm, let (mean, rstd) = s.stats {
                let dNormed = buffer("dNormed", [b * n, d])
                switch ctx.pooling {
                case .cls: for bi in 0..<b { (dNormed.data + bi * n * d).update(from: dOut.data + bi * d, count: d) }
                case .avg: meanTokensBackward(dInput: dNormed.data, dOut: dOut.data, batch: b, tokens: n, width: d, from: t0)
                }
                layerNormBackward(dInput: dTokens.data, dWeight: params.g(norm.w), dBias: params.g(norm.b),
                                  dOut: dNormed.data, input: ctx.encoder.blockOutput(s.block).data, weight: params.v(norm.w), mean: mean.data,
                                  rstd: rstd.data, rows: b * n, width: d)
            } else if ctx.pooling == .cls {
                for bi in 0..<b { (dTokens.data + bi * n * d).update(from: dOut.data + bi * d, count: d) }
            } else {
                var dPooled = dOut
                if let fcNorm, let pooled = s.pooled, let (mean, rstd) = s.stats {
                    dPooled = buffer("dPooled", [b, d])
                    layerNormBackward(dInput: dPooled.data, dWeight: params.g(fcNorm.w), dBias: params.g(fcNorm.b),
                                      dOut: dOut.data, input: pooled.data, weight: params.v(fcNorm.w),
                                      mean: mean.data, rstd: rstd.data, rows: b, width: d)
                }
                meanTokensBackward(dInput: dTokens.data, dOut: dPooled.data, batch: b, tokens: n, width: d, from: t0)
            }
            blockGradients[s.block] = dTokens
        }
        backwardEncoder(ctx.encoder, blockGradients: blockGradients)
    }

    /// Classifier forward: features as `forwardFeatures` with the model's pooling, then `head`:
    /// `ctx.logits` (B,K).
    public func forwardLogits(images: UnsafePointer<Float>, batch b: Int, training t: Bool = false,
                              seed: UInt64 = 0) -> FeaturesContext {
        guard let head else { preconditionFailure("the model has no classification head") }
        let ctx = forwardFeatures(images: images, batch: b, training: t, seed: seed)
        let logits = Tensor([b, config.numClasses])
        linearForward(out: logits.data, input: ctx.features.data, weight: params.v(head.w), bias: params.v(head.b),
                      rows: b, inDim: config.embedDim, outDim: config.numClasses, bf16: bf16)
        ctx.logits = logits
        return ctx
    }

    /// Cross-entropy of `ctx.logits` against target distributions (B,K); returns the mean loss and
    /// keeps what `backwardClassification` needs in `ctx`.
    public func classificationLoss(_ ctx: FeaturesContext, targets t: [Float]) -> Float {
        guard let logits = ctx.logits else { preconditionFailure("classificationLoss needs forwardLogits") }
        let b = ctx.encoder.batch, k = config.numClasses
        precondition(t.count == b * k, "targets must be (B,K)")
        let targets = Tensor([b, k], t), probs = Tensor([b, k])
        ctx.loss = (probs, targets)
        return crossEntropyForward(probs: probs.data, logits: logits.data, targets: targets.data, rows: b, classes: k)
    }

    /// Backward from the classification loss of `ctx` into every parameter gradient (accumulating).
    public func backwardClassification(_ ctx: FeaturesContext) {
        guard let head, let (probs, targets) = ctx.loss else { preconditionFailure("backward needs classificationLoss") }
        let b = ctx.encoder.batch, k = config.numClasses, d = config.embedDim
        let dLogits = Tensor([b, k])
        crossEntropyBackward(dLogits: dLogits.data, probs: probs.data, targets: targets.data, rows: b, classes: k)
        let dFeatures = Tensor([b, d])
        linearBackward(dInput: dFeatures.data, dWeight: params.g(head.w), dBias: params.g(head.b), dOut: dLogits.data,
                       input: ctx.features.data, weight: params.v(head.w), rows: b, inDim: d, outDim: k, bf16: bf16)
        backwardFeatures(ctx, dFeatures: dFeatures)
    }

    // MARK: - MAE pretraining

    /// forward_decoder: the latent (B,1+Lk,D) of `enc` (`forwardEncoder` with a mask at img_size) ->
    /// `pred` (B,L,P*P*C) in the returned context.
    public func forwardDecoder(_ enc: EncoderContext) -> DecoderContext {
        guard let dcd = decoder else { preconditionFailure("forwardDecoder needs a decoder") }
        let m = enc.mask, l = config.numPatches
        precondition(m.numPatches == l && enc.prefixTokens == 1, "the decoder reads a masked forward at img_size")
        let b = enc.batch, d = config.embedDim, dd = dcd.config.embedDim, lk = m.keepCount
        let nIn = 1 + lk, nOut = 1 + l, pd = config.patchDim
        let embedded = Tensor([b, nIn, dd])
        linearForward(out: embedded.data, input: enc.output.data, weight: params.v(dcd.embedW),
                      bias: params.v(dcd.embedB), rows: b * nIn, inDim: d, outDim: dd, bf16: bf16)
        // Append mask tokens, unshuffle to patch order, add the decoder's position embedding.
        let pass = dcd.stack.begin(batch: b, tokens: nOut, training: enc.training)
        let x = pass.input, mt = params.v(dcd.maskToken), pos = params.v(dcd.posEmbed)
        for bi in 0..<b {
            let dst0 = x + bi * nOut * dd, src0 = embedded.data + bi * nIn * dd
            for i in 0..<dd { dst0[i] = src0[i] + pos[i] }
            for patch in 0..<l {
                let rank = m.idsRestore[bi * l + patch]
                let src = rank < lk ? src0 + (1 + rank) * dd : mt
                let dst = dst0 + (1 + patch) * dd, pe = pos + (1 + patch) * dd
                for i in 0..<dd { dst[i] = src[i] + pe[i] }
            }
        }
        var rng = enc.rng
        let out = dcd.stack.forward(params, pass, rng: &rng)
        let normed = Tensor([b, nOut, dd]), mean = Tensor([b * nOut]), rstd = Tensor([b * nOut])
        layerNormForward(out: normed.data, mean: mean.data, rstd: rstd.data, input: out.data,
                         weight: params.v(dcd.normW), bias: params.v(dcd.normB), rows: b * nOut, width: dd)
        let predFull = Tensor([b, nOut, pd])
        linearForward(out: predFull.data, input: normed.data, weight: params.v(dcd.predW),
                      bias: params.v(dcd.predB), rows: b * nOut, inDim: dd, outDim: pd, bf16: bf16)
        let pred = Tensor([b, l, pd])
        for bi in 0..<b {
            (pred.data + bi * l * pd).update(from: predFull.data + (bi * nOut + 1) * pd, count: l * pd)
        }
        return DecoderContext(encoder: enc, pred: pred, stack: pass, normed: normed, stats: (mean, rstd))
    }

    /// forward_loss: mean squared error on the removed patches only, against per-patch normalised
    /// pixels when normPixLoss ((t - mean) / sqrt(var + 1e-6), unbiased var as torch.var).
    /// Keeps the target in `ctx` for `backwardPretrain`.
    public func forwardLoss(_ ctx: DecoderContext, images: UnsafePointer<Float>) -> Float {
        let b = ctx.encoder.batch, l = config.numPatches, pd = config.patchDim, m = ctx.encoder.mask, pred = ctx.pred
        let target = Tensor([b, l, pd])
        ctx.target = target
        let t = target.data
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

    /// Backward of `forwardLoss(ctx, …)` through the decoder and the encoder into every gradient (accumulating).
    public func backwardPretrain(_ ctx: DecoderContext) {
        guard let dcd = decoder, let target = ctx.target else { preconditionFailure("backwardPretrain needs forwardLoss") }
        let m = ctx.encoder.mask, pred = ctx.pred
        let b = ctx.encoder.batch, d = config.embedDim, dd = dcd.config.embedDim, l = config.numPatches, lk = m.keepCount
        let nIn = 1 + lk, nOut = 1 + l, pd = config.patchDim
        let removed = max(m.mask.reduce(0, +), 1)
        // d loss / d pred: 2 (pred - target) / (P*P*C) on removed patches, over their count.
        let dPredFull = buffer("dPred", [b, nOut, pd])
        for bi in 0..<b {
            for patch in 0..<l where m.mask[bi * l + patch] != 0 {
                let scale = 2 * m.mask[bi * l + patch] / (Float(pd) * removed)
                let src = pred.data + (bi * l + patch) * pd, t = target.data + (bi * l + patch) * pd
                let dst = dPredFull.data + (bi * nOut + 1 + patch) * pd
                for i in 0..<pd { dst[i] = scale * (src[i] - t[i]) }
            }
        }
        let dNormed = buffer("dDecoderNormed", [b, nOut, dd])
        linearBackward(dInput: dNormed.data, dWeight: params.g(dcd.predW), dBias: params.g(dcd.predB),
                       dOut: dPredFull.data, input: ctx.normed.data, weight: params.v(dcd.predW),
                       rows: b * nOut, inDim: dd, outDim: pd, bf16: bf16)
        let dStackOut = buffer("dDecoderOut", [b, nOut, dd])
        layerNormBackward(dInput: dStackOut.data, dWeight: params.g(dcd.normW), dBias: params.g(dcd.normB),
                          dOut: dNormed.data, input: ctx.stack.output(dcd.config.depth - 1).data, weight: params.v(dcd.normW),
                          mean: ctx.stats.mean.data, rstd: ctx.stats.rstd.data, rows: b * nOut, width: dd)
        let dx = dcd.stack.backward(params, ctx.stack, dOutputs: [dcd.config.depth - 1: UnsafePointer(dStackOut.data)])
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
                       dOut: dEmbedded.data, input: ctx.encoder.output.data, weight: params.v(dcd.embedW),
                       rows: b * nIn, inDim: d, outDim: dd, bf16: bf16)
        backwardEncoder(ctx.encoder, outputGradient: dLatent)
    }

    /// The scratch buffer `key` with `shape`, zero-filled, reused across calls.
    private func buffer(_ key: String, _ shape: [Int]) -> Tensor {
        if let t = scratch[key], t.shape == shape { t.zero(); return t }
        let t = Tensor(shape)
        scratch[key] = t
        return t
    }
}
