import Foundation

// What a forward (and backward) allocates, estimated before it runs, so a huge `--img-size` or
// `--batch-size` is one sentence instead of an allocation failure (SIGABRT) or the OOM killer.
// Sizes are Doubles: at 100,000 px the attention scores alone overflow Int.

extension TransformerStack {
    /// Floats the stack's buffers hold for a batch of b sequences of n tokens (`begin`'s allocation:
    /// activations per block, the attention scores, residuals; the backward's scratch). The scores are
    /// the (B,H,N,N) probs, or on the fused path (n >= `fusedTokens`) the (B,H,N) logsumexp. BEiT's
    /// options add the two unscaled branches per block (layer scale) and one (H,N,N) bias per pass
    /// with its gradient (relative position bias).
    static func bufferFloats(batch b: Int, tokens n: Int, width d: Int, hidden: Int, heads: Int,
                             depth: Int, training: Bool, fusedTokens: Int, beit: BEiTOptions? = nil) -> Double {
        let fused = n >= fusedTokens
        let (b, n, d, h, hd) = (Double(b), Double(n), Double(d), Double(hidden), Double(heads))
        let r = b * n
        let scores = fused ? b * hd * n : b * hd * n * n
        let branches = beit?.layerScale != nil ? 2 * r * d : 0
        let perBlock = 4 * r * d + 4 * r + 3 * r * d + scores + 2 * r * h + 2 * b + branches
        let sets = training ? Double(depth) : 1
        let residuals = (training ? Double(depth) + 1 : 2) * r * d
        let bias = beit?.relativePositionWindow != nil ? (training ? 2 : 1) * hd * n * n : 0
        // The attention backward's scratch: dS (N,N), or on the fused path delta (B,H,N).
        let backward = training ? 4 * r * d + 3 * r * d + 2 * r * h + (fused ? b * hd * n : n * n) + branches / 2 : 0
        return sets * perBlock + residuals + bias + backward
    }
}

extension VisionTransformer {
    /// Estimated peak bytes of one forward at batch `b` (plus its backward, gradients and AdamW
    /// moments when `training`), with `maskRatio` of the patches removed (MAE pretraining and
    /// visualisation: the decoder, when the model has one, then runs on every patch). Below
    /// `fusedAttentionTokens` dominated by the attention scores, B * H * N^2 floats per block kept;
    /// at or above it the fused attention keeps B * H * N.
    public func peakMemoryBytes(batch b: Int, training: Bool, maskRatio: Double = 0) -> Double {
        let c = config, l = c.numPatches
        let kept = Int((Double(l) * (1 - maskRatio)).rounded(.down))
        let n = 1 + max(kept, 1)
        var floats = TransformerStack.bufferFloats(batch: b, tokens: n, width: c.embedDim, hidden: c.mlpHidden,
                                                   heads: c.numHeads, depth: c.depth, training: training,
                                                   fusedTokens: encoder.fusedAttentionTokens, beit: c.beit)
        // Images, gathered patches, embeddings, the tokens before and after the final norm.
        floats += Double(b) * (Double(c.inChans * c.imgSize * c.imgSize) + Double(kept) * Double(c.patchDim + c.embedDim)
                               + 3 * Double(n) * Double(c.embedDim))
        if let dc = c.decoder, let stack = decoder?.stack, maskRatio > 0 {
            let nOut = 1 + l
            floats += TransformerStack.bufferFloats(batch: b, tokens: nOut, width: dc.embedDim, hidden: dc.mlpHidden,
                                                    heads: dc.numHeads, depth: dc.depth, training: training,
                                                    fusedTokens: stack.fusedAttentionTokens)
            floats += Double(b) * Double(nOut) * Double(4 * dc.embedDim + 3 * c.patchDim)
        }
        let parameters = Double(params.layout.totalCount) * (training ? 4 : 1)   // values, grads, two moments
        return 4 * (floats + parameters)
    }

    /// Refuses, before anything is allocated, a forward at batch `b` whose estimated peak memory
    /// (`peakMemoryBytes`) exceeds the machine's memory, in one sentence naming the image size and the
    /// batch size (the `--img-size` / `--batch-size` that set them).
    public func checkMemory(batch b: Int, training: Bool, maskRatio: Double = 0) throws {
        let need = peakMemoryBytes(batch: b, training: training, maskRatio: maskRatio)
        let have = Double(physicalMemoryBytes())
        guard need > have else { return }
        let c = config
        throw ModelError.tooLarge("a \(training ? "training step" : "forward pass") at image size \(c.imgSize) " +
            "(\(grouped(Double(c.numPatches + 1))) tokens of patch \(c.patchSize)) and batch size \(b) needs about \(gigabytes(need)) " +
            "of memory, more than this machine's \(gigabytes(have)); lower --img-size or --batch-size")
    }
}

extension VisionTransformer {
    /// Refuses a model whose parameters (values and gradients, `count` floats each) alone exceed the
    /// machine's memory: at a huge image size pos_embed is (1 + L, D).
    static func checkParameterMemory(_ c: ViTConfig, count: Int) throws {
        let need = 8 * Double(count), have = Double(physicalMemoryBytes())
        guard need > have else { return }
        throw ModelError.tooLarge("a model at image size \(c.imgSize) (\(grouped(Double(c.numPatches + 1))) tokens of patch \(c.patchSize)) " +
            "holds \(grouped(Double(count))) parameters, about \(gigabytes(need)) with their gradients, more than this machine's " +
            "\(gigabytes(have)) of memory; lower --img-size")
    }
}

private func gigabytes(_ bytes: Double) -> String {
    bytes >= 1e12 ? grouped(bytes / 1e9) + " GB" : String(format: "%.1f GB", bytes / 1e9)
}

/// A whole number with thousands separators: 62,501.
private func grouped(_ x: Double) -> String {
    let digits = String(format: "%.0f", x.rounded())
    var out = ""
    for (i, ch) in digits.reversed().enumerated() {
        if i > 0 && i % 3 == 0 { out.append(",") }
        out.append(ch)
    }
    return String(out.reversed())
}

/// The memory this process may use: physical memory, or the cgroup's limit when that is lower.
public func physicalMemoryBytes() -> Int {
    var bytes = Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE)))
    for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
        if let text = try? String(contentsOfFile: path, encoding: .utf8),
           let limit = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), limit > 0 {
            bytes = min(bytes, limit)
        }
    }
    return bytes
}
