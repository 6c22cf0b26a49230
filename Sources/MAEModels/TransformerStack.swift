import Foundation
import MAEKernels

extension ParameterLayout {
    /// Appends `depth` pre-norm transformer blocks, 12 tensors each: `PREFIX.{i}.norm1.weight`, ...
    mutating func addBlocks(prefix: String, depth: Int, width d: Int, hidden: Int) {
        for i in 0..<depth {
            let p = "\(prefix).\(i)."
            add(p + "norm1.weight", [d]); add(p + "norm1.bias", [d])
            add(p + "attn.qkv.weight", [3 * d, d]); add(p + "attn.qkv.bias", [3 * d])
            add(p + "attn.proj.weight", [d, d]); add(p + "attn.proj.bias", [d])
            add(p + "norm2.weight", [d]); add(p + "norm2.bias", [d])
            add(p + "mlp.fc1.weight", [hidden, d]); add(p + "mlp.fc1.bias", [hidden])
            add(p + "mlp.fc2.weight", [d, hidden]); add(p + "mlp.fc2.bias", [d])
        }
    }
}

/// Offsets of one pre-norm transformer block's parameters (keys `PREFIX.{i}.norm1.weight`, ...).
struct BlockParameters {
    let norm1W, norm1B, qkvW, qkvB, projW, projB, norm2W, norm2B, fc1W, fc1B, fc2W, fc2B: Int

    /// Reads the offsets of block `prefix` (e.g. "blocks.3") from a layout made by `addBlocks`.
    init(_ layout: ParameterLayout, prefix: String) {
        let at = { (name: String) in layout.offset("\(prefix).\(name)")! }
        norm1W = at("norm1.weight"); norm1B = at("norm1.bias")
        qkvW = at("attn.qkv.weight"); qkvB = at("attn.qkv.bias")
        projW = at("attn.proj.weight"); projB = at("attn.proj.bias")
        norm2W = at("norm2.weight"); norm2B = at("norm2.bias")
        fc1W = at("mlp.fc1.weight"); fc1B = at("mlp.fc1.bias")
        fc2W = at("mlp.fc2.weight"); fc2B = at("mlp.fc2.bias")
    }
}

/// What one block keeps from its forward for the backward. R = B * N rows.
final class BlockActivations {
    let ln1, ln2, att, x1: Tensor          // (R,D)
    let mean1, rstd1, mean2, rstd2: Tensor // (R)
    let qkv: Tensor                        // (R,3D)
    /// The attention's softmax for the backward: probs (B,H,N,N), or logsumexp (B,H,N) when `fused`.
    let scores: Tensor
    let h, g: Tensor                       // (R,hidden) fc1 output, GELU output
    let keep1, keep2: Tensor               // (B) drop-path scales of the two branches

    init(batch: Int, tokens: Int, width: Int, hidden: Int, heads: Int, fused: Bool) {
        let r = batch * tokens
        ln1 = Tensor([r, width]); ln2 = Tensor([r, width]); att = Tensor([r, width]); x1 = Tensor([r, width])
        mean1 = Tensor([r]); rstd1 = Tensor([r]); mean2 = Tensor([r]); rstd2 = Tensor([r])
        qkv = Tensor([r, 3 * width])
        scores = Tensor(fused ? [batch, heads, tokens] : [batch, heads, tokens, tokens])
        h = Tensor([r, hidden]); g = Tensor([r, hidden])
        keep1 = Tensor([batch]); keep2 = Tensor([batch])
    }
}

/// The activation buffers of one pass through a stack, for one (B, N) and mode: every block's set
/// and every residual in training mode, one set and two ping-pong residuals in inference.
final class StackBuffers {
    let batch, tokens: Int
    let training: Bool
    /// The blocks' attention runs fused (FlashAttention.swift) and keeps logsumexp, not probs.
    let fused: Bool
    let acts: [BlockActivations]
    /// residuals[i] is block i's input; residuals[i + 1] its output (mod 2 in inference).
    var residuals: [Tensor]

    init(batch b: Int, tokens n: Int, training t: Bool, fused f: Bool, depth: Int, width: Int, hidden: Int, heads: Int) {
        batch = b; tokens = n; training = t; fused = f
        acts = (0..<(t ? depth : 1)).map { _ in
            BlockActivations(batch: b, tokens: n, width: width, hidden: hidden, heads: heads, fused: f)
        }
        residuals = (0..<(t ? depth + 1 : 2)).map { _ in Tensor([b * n, width]) }
    }
}

/// The one spare set of buffers a stack keeps between passes: a pass that ends hands its buffers
/// back here, the next pass of the same shape takes them (fresh multi-MB allocations page-fault).
/// Holds at most one set, so a change of batch size frees the old one.
final class SpareBuffers: @unchecked Sendable {
    private let lock = NSLock()
    private var spare: StackBuffers?

    func take(batch b: Int, tokens n: Int, training t: Bool, fused f: Bool) -> StackBuffers? {
        lock.lock(); defer { lock.unlock() }
        guard let s = spare, s.batch == b, s.tokens == n, s.training == t, s.fused == f else { return nil }
        spare = nil
        return s
    }

    func give(_ buffers: StackBuffers) {
        lock.lock(); defer { lock.unlock() }
        spare = buffers
    }
}

/// One forward through a `TransformerStack`: the activations its backward reads and the outputs of
/// the blocks asked for. Independent of every other pass; its buffers go back to the stack's spare
/// set when it ends, unless a caller still holds one of its outputs.
final class StackPass {
    let buffers: StackBuffers
    private let spare: SpareBuffers
    /// Blocks 0..<ran were run.
    fileprivate(set) var ran = 0
    /// Inference copies of the outputs asked for (the ping-pong residuals are overwritten).
    fileprivate var kept: [Int: Tensor] = [:]

    fileprivate init(_ buffers: StackBuffers, spare: SpareBuffers) {
        self.buffers = buffers
        self.spare = spare
    }

    /// Hands the buffers on, unless a caller still holds one of the outputs (a residual).
    deinit {
        for i in buffers.residuals.indices where !isKnownUniquelyReferenced(&buffers.residuals[i]) { return }
        spare.give(buffers)
    }

    var batch: Int { buffers.batch }
    var tokens: Int { buffers.tokens }
    var training: Bool { buffers.training }
    var fused: Bool { buffers.fused }
    /// The buffer the caller fills with the stack's input (B,N,D) before `forward`.
    var input: UnsafeMutablePointer<Float> { buffers.residuals[0].data }

    fileprivate func residual(_ i: Int) -> Tensor { training ? buffers.residuals[i] : buffers.residuals[i % 2] }

    /// Block i's output (B,N,D): any block run in training mode; in inference the blocks kept and the last run.
    func output(_ i: Int) -> Tensor {
        precondition(i < ran, "block \(i) was not run")
        if training || i == ran - 1 { return residual(i + 1) }
        guard let t = kept[i] else { preconditionFailure("block \(i)'s output was not kept") }
        return t
    }
}

/// A stack of MAE/timm pre-norm ViT blocks:
///   x1 = x + DropPath(proj(attn(norm1(x)))),  out = x1 + DropPath(fc2(GELU(fc1(norm2(x1))))).
/// Each forward is a `StackPass` holding its own activations (every block's in training mode, for
/// the backward; one reused set in inference); the stack keeps only parameter offsets, one spare
/// set of buffers and the backward's scratch.
final class TransformerStack {
    let blocks: [BlockParameters]
    let width, hidden, heads: Int
    /// Stochastic depth rate of the last block (linearly increasing from 0, as timm).
    var dropPath: Float = 0
    /// The linear layers' arithmetic (qkv, proj, fc1, fc2, forward and backward); attention's own
    /// products, the norms and GELU stay fp32 either way.
    var precision = Precision.fp32
    /// Sequences of at least this many tokens run the fused attention (`flashAttentionForward`,
    /// logsumexp (B,H,N) kept instead of probs (B,H,N,N)); shorter ones the materialised one.
    var fusedAttentionTokens = TransformerStack.defaultFusedAttentionTokens

    /// 1024 tokens: every preset at its default 224 px (at most 257 tokens) stays on the materialised
    /// path; 448 px at patch 14 or 512 px at patch 16 (1025 tokens with the cls token) and ViTDet's
    /// 1024 px (4097) run fused, where the probs would keep 4 MB and 64 MB per (image, head, block).
    /// Measured on 2 cores (ViT-B, batch 1): at 1025 tokens the fused forward takes the materialised
    /// one's time and a training step ~10% longer; at 4097 the forward's time again, 0.8 GB less peak.
    static let defaultFusedAttentionTokens = 1024

    private let spare = SpareBuffers()
    private var scratch: (dX: Tensor, dLn: Tensor, dBranch: Tensor, dAtt: Tensor, dQKV: Tensor, dH: Tensor, dG: Tensor)?

    /// The stack over the blocks `prefix.0` ..< `prefix.{depth}` of `layout` (see `addBlocks`).
    init(_ layout: ParameterLayout, prefix: String, depth: Int, width: Int, hidden: Int, heads: Int) {
        blocks = (0..<depth).map { BlockParameters(layout, prefix: "\(prefix).\($0)") }
        self.width = width
        self.hidden = hidden
        self.heads = heads
    }

    /// A new pass for b sequences of n tokens; the caller fills `pass.input` (B,N,D), then calls `forward`.
    func begin(batch b: Int, tokens n: Int, training t: Bool) -> StackPass {
        let fused = n >= fusedAttentionTokens
        let buffers = spare.take(batch: b, tokens: n, training: t, fused: fused)
            ?? StackBuffers(batch: b, tokens: n, training: t, fused: fused, depth: blocks.count, width: width,
                            hidden: hidden, heads: heads)
        return StackPass(buffers, spare: spare)
    }

    /// Runs blocks 0..<through on the pass's input (all by default), keeping the outputs of `keep`
    /// (inference copies them; training keeps every output anyway). Returns the last output (B,N,D).
    @discardableResult
    func forward(_ p: ParameterStore, _ pass: StackPass, through last: Int? = nil, keep: Set<Int> = [],
                 rng: inout RandomStream) -> Tensor {
        let last = last ?? blocks.count, batch = pass.batch, tokens = pass.tokens, training = pass.training
        precondition(pass.ran == 0 && (1...blocks.count).contains(last), "a pass runs once, through 1...\(blocks.count) blocks")
        let r = batch * tokens, d = width, bf16 = precision == .bf16 ? p.bf16Weights : nil
        for (i, w) in blocks.prefix(last).enumerated() {
            let a = pass.buffers.acts[training ? i : 0]
            let x = pass.residual(i).data, out = pass.residual(i + 1).data
            let rate = training && blocks.count > 1 ? dropPath * Float(i) / Float(blocks.count - 1) : 0
            layerNormForward(out: a.ln1.data, mean: a.mean1.data, rstd: a.rstd1.data, input: x,
                             weight: p.v(w.norm1W), bias: p.v(w.norm1B), rows: r, width: d)
            linearForward(out: a.qkv.data, input: a.ln1.data, weight: p.v(w.qkvW), bias: p.v(w.qkvB),
                          rows: r, inDim: d, outDim: 3 * d, bf16: bf16)
            if pass.fused {
                flashAttentionForward(out: a.att.data, logSumExp: a.scores.data, qkv: a.qkv.data,
                                      size: FlashAttentionSize(batch: batch, tokens: tokens, width: d, heads: heads))
            } else {
                attentionForward(out: a.att.data, probs: a.scores.data, qkv: a.qkv.data,
                                 batch: batch, tokens: tokens, width: d, heads: heads)
            }
            linearForward(out: a.x1.data, input: a.att.data, weight: p.v(w.projW), bias: p.v(w.projB),
                          rows: r, inDim: d, outDim: d, bf16: bf16)
            applyDropPath(a.x1.data, keep: a.keep1, rate: rate, batch: batch, tokens: tokens, rng: &rng)
            addForward(out: a.x1.data, a.x1.data, x, count: r * d)
            layerNormForward(out: a.ln2.data, mean: a.mean2.data, rstd: a.rstd2.data, input: a.x1.data,
                             weight: p.v(w.norm2W), bias: p.v(w.norm2B), rows: r, width: d)
            linearForward(out: a.h.data, input: a.ln2.data, weight: p.v(w.fc1W), bias: p.v(w.fc1B),
                          rows: r, inDim: d, outDim: hidden, bf16: bf16)
            geluForward(out: a.g.data, input: a.h.data, count: r * hidden)
            linearForward(out: out, input: a.g.data, weight: p.v(w.fc2W), bias: p.v(w.fc2B),
                          rows: r, inDim: hidden, outDim: d, bf16: bf16)
            applyDropPath(out, keep: a.keep2, rate: rate, batch: batch, tokens: tokens, rng: &rng)
            addForward(out: out, out, a.x1.data, count: r * d)
            if !training, keep.contains(i), i < last - 1 { pass.kept[i] = pass.residual(i + 1).clone() }
        }
        pass.ran = last
        return pass.residual(last)
    }

    /// Scales each sample's branch by 0 or 1/(1-rate) (timm's DropPath); records the scales.
    private func applyDropPath(_ branch: UnsafeMutablePointer<Float>, keep: Tensor, rate: Float,
                               batch: Int, tokens: Int, rng: inout RandomStream) {
        guard rate > 0 else { keep.buffer.update(repeating: 1); return }
        dropMask(keep.data, count: batch, p: rate, rng: &rng)
        scaleGroupsForward(out: branch, input: branch, scale: keep.data, groups: batch, size: tokens * width)
    }

    /// Backward of `pass` from the gradients of block outputs: dOutputs[i] (B,N,D) is the gradient of
    /// block i's output. Runs from the highest block given down to `lowest`, adding each block's
    /// gradient as it passes it; returns the gradient of block `lowest`'s input (a buffer owned by the
    /// stack, valid until its next backward). Parameter gradients accumulate. Blocks below `lowest`
    /// get no gradient and cost nothing; `lowest` must not be above the highest block given.
    func backward(_ p: ParameterStore, _ pass: StackPass, dOutputs: [Int: UnsafePointer<Float>],
                  lowest: Int = 0) -> UnsafeMutablePointer<Float> {
        let batch = pass.batch, tokens = pass.tokens
        guard let top = dOutputs.keys.max() else { preconditionFailure("backward needs at least one gradient") }
        precondition(pass.training, "backward needs a training-mode forward")
        precondition(top < pass.ran && lowest <= top, "gradient for block \(top) of a pass that ran \(pass.ran) blocks")
        let r = batch * tokens, d = width, bf16 = precision == .bf16 ? p.bf16Weights : nil
        if scratch?.dX.count != r * d || scratch?.dH.count != r * hidden {
            scratch = (Tensor([r, d]), Tensor([r, d]), Tensor([r, d]), Tensor([r, d]), Tensor([r, 3 * d]),
                       Tensor([r, hidden]), Tensor([r, hidden]))
        }
        let s = scratch!
        let dx = s.dX.data
        dx.update(from: dOutputs[top]!, count: r * d)
        for i in stride(from: top, through: lowest, by: -1) {
            if i < top, let g = dOutputs[i] { addForward(out: dx, dx, g, count: r * d) }
            let w = blocks[i], a = pass.buffers.acts[i], x = pass.residual(i).data
            // out = x1 + keep2 * fc2(g)
            let dBranch = scaledBranchGrad(dx, keep: a.keep2, into: s.dBranch, batch: batch, tokens: tokens)
            s.dG.zero()
            linearBackward(dInput: s.dG.data, dWeight: p.g(w.fc2W), dBias: p.g(w.fc2B), dOut: dBranch,
                           input: a.g.data, weight: p.v(w.fc2W), rows: r, inDim: hidden, outDim: d, bf16: bf16)
            s.dH.zero()
            geluBackward(dInput: s.dH.data, dOut: s.dG.data, input: a.h.data, count: r * hidden)
            s.dLn.zero()
            linearBackward(dInput: s.dLn.data, dWeight: p.g(w.fc1W), dBias: p.g(w.fc1B), dOut: s.dH.data,
                           input: a.ln2.data, weight: p.v(w.fc1W), rows: r, inDim: d, outDim: hidden, bf16: bf16)
            layerNormBackward(dInput: dx, dWeight: p.g(w.norm2W), dBias: p.g(w.norm2B), dOut: s.dLn.data,
                              input: a.x1.data, weight: p.v(w.norm2W), mean: a.mean2.data, rstd: a.rstd2.data,
                              rows: r, width: d)
            // x1 = x + keep1 * proj(attn(norm1(x)))
            let dBranch1 = scaledBranchGrad(dx, keep: a.keep1, into: s.dBranch, batch: batch, tokens: tokens)
            s.dAtt.zero()
            linearBackward(dInput: s.dAtt.data, dWeight: p.g(w.projW), dBias: p.g(w.projB), dOut: dBranch1,
                           input: a.att.data, weight: p.v(w.projW), rows: r, inDim: d, outDim: d, bf16: bf16)
            s.dQKV.zero()
            if pass.fused {
                flashAttentionBackward(dQKV: s.dQKV.data, dOut: s.dAtt.data, out: a.att.data, logSumExp: a.scores.data,
                                       qkv: a.qkv.data,
                                       size: FlashAttentionSize(batch: batch, tokens: tokens, width: d, heads: heads))
            } else {
                attentionBackward(dQKV: s.dQKV.data, dOut: s.dAtt.data, qkv: a.qkv.data, probs: a.scores.data,
                                  batch: batch, tokens: tokens, width: d, heads: heads)
            }
            s.dLn.zero()
            linearBackward(dInput: s.dLn.data, dWeight: p.g(w.qkvW), dBias: p.g(w.qkvB), dOut: s.dQKV.data,
                           input: a.ln1.data, weight: p.v(w.qkvW), rows: r, inDim: d, outDim: 3 * d, bf16: bf16)
            layerNormBackward(dInput: dx, dWeight: p.g(w.norm1W), dBias: p.g(w.norm1B), dOut: s.dLn.data,
                              input: x, weight: p.v(w.norm1W), mean: a.mean1.data, rstd: a.rstd1.data,
                              rows: r, width: d)
        }
        return dx
    }

    /// The gradient of a drop-path branch: dOut itself when nothing was dropped, else scaled.
    private func scaledBranchGrad(_ dOut: UnsafeMutablePointer<Float>, keep: Tensor, into buffer: Tensor,
                                  batch: Int, tokens: Int) -> UnsafeMutablePointer<Float> {
        if keep.buffer.allSatisfy({ $0 == 1 }) { return dOut }
        scaleGroupsForward(out: buffer.data, input: dOut, scale: keep.data, groups: batch, size: tokens * width)
        return buffer.data
    }
}
