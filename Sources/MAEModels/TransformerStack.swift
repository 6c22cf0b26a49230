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
    let probs: Tensor                      // (B,H,N,N)
    let h, g: Tensor                       // (R,hidden) fc1 output, GELU output
    let keep1, keep2: Tensor               // (B) drop-path scales of the two branches

    init(batch: Int, tokens: Int, width: Int, hidden: Int, heads: Int) {
        let r = batch * tokens
        ln1 = Tensor([r, width]); ln2 = Tensor([r, width]); att = Tensor([r, width]); x1 = Tensor([r, width])
        mean1 = Tensor([r]); rstd1 = Tensor([r]); mean2 = Tensor([r]); rstd2 = Tensor([r])
        qkv = Tensor([r, 3 * width])
        probs = Tensor([batch, heads, tokens, tokens])
        h = Tensor([r, hidden]); g = Tensor([r, hidden])
        keep1 = Tensor([batch]); keep2 = Tensor([batch])
    }
}

/// A stack of MAE/timm pre-norm ViT blocks:
///   x1 = x + DropPath(proj(attn(norm1(x)))),  out = x1 + DropPath(fc2(GELU(fc1(norm2(x1))))).
/// Owns its activation buffers for the current (B, N); `training` keeps every block's activations
/// for the backward, inference reuses one set.
final class TransformerStack {
    let blocks: [BlockParameters]
    let width, hidden, heads: Int
    /// Stochastic depth rate of the last block (linearly increasing from 0, as timm).
    var dropPath: Float = 0

    private(set) var batch = 0, tokens = 0
    private var training = false
    private var acts: [BlockActivations] = []
    /// residuals[i] is block i's input; residuals[depth] the output (two ping-pong buffers in inference).
    private var residuals: [Tensor] = []
    private var scratch: (dX: Tensor, dLn: Tensor, dBranch: Tensor, dAtt: Tensor, dQKV: Tensor, dH: Tensor, dG: Tensor)?

    /// The stack over the blocks `prefix.0` ..< `prefix.{depth}` of `layout` (see `addBlocks`).
    init(_ layout: ParameterLayout, prefix: String, depth: Int, width: Int, hidden: Int, heads: Int) {
        blocks = (0..<depth).map { BlockParameters(layout, prefix: "\(prefix).\($0)") }
        self.width = width
        self.hidden = hidden
        self.heads = heads
    }

    /// The buffer the caller fills with the stack's input (B,N,D) before `forward`.
    func input(batch b: Int, tokens n: Int, training t: Bool) -> UnsafeMutablePointer<Float> {
        if b != batch || n != tokens || t != training || acts.isEmpty {
            batch = b; tokens = n; training = t
            let sets = t ? blocks.count : 1
            acts = (0..<sets).map { _ in BlockActivations(batch: b, tokens: n, width: width, hidden: hidden, heads: heads) }
            residuals = (0..<(t ? blocks.count + 1 : 2)).map { _ in Tensor([b * n, width]) }
            scratch = nil
        }
        return residuals[0].data
    }

    private func residual(_ i: Int) -> Tensor { training ? residuals[i] : residuals[i % 2] }

    /// Block i's output from the last training-mode forward (B,N,D), for parity tests.
    func blockOutput(_ i: Int) -> Tensor { residual(i + 1) }

    /// Runs every block on the input buffer; returns the output (B,N,D).
    func forward(_ p: ParameterStore, rng: inout RandomStream) -> UnsafeMutablePointer<Float> {
        let r = batch * tokens, d = width
        for (i, w) in blocks.enumerated() {
            let a = acts[training ? i : 0]
            let x = residual(i).data, out = residual(i + 1).data
            let rate = training && blocks.count > 1 ? dropPath * Float(i) / Float(blocks.count - 1) : 0
            layerNormForward(out: a.ln1.data, mean: a.mean1.data, rstd: a.rstd1.data, input: x,
                             weight: p.v(w.norm1W), bias: p.v(w.norm1B), rows: r, width: d)
            linearForward(out: a.qkv.data, input: a.ln1.data, weight: p.v(w.qkvW), bias: p.v(w.qkvB),
                          rows: r, inDim: d, outDim: 3 * d)
            attentionForward(out: a.att.data, probs: a.probs.data, qkv: a.qkv.data,
                             batch: batch, tokens: tokens, width: d, heads: heads)
            linearForward(out: a.x1.data, input: a.att.data, weight: p.v(w.projW), bias: p.v(w.projB),
                          rows: r, inDim: d, outDim: d)
            applyDropPath(a.x1.data, keep: a.keep1, rate: rate, rng: &rng)
            addForward(out: a.x1.data, a.x1.data, x, count: r * d)
            layerNormForward(out: a.ln2.data, mean: a.mean2.data, rstd: a.rstd2.data, input: a.x1.data,
                             weight: p.v(w.norm2W), bias: p.v(w.norm2B), rows: r, width: d)
            linearForward(out: a.h.data, input: a.ln2.data, weight: p.v(w.fc1W), bias: p.v(w.fc1B),
                          rows: r, inDim: d, outDim: hidden)
            geluForward(out: a.g.data, input: a.h.data, count: r * hidden)
            linearForward(out: out, input: a.g.data, weight: p.v(w.fc2W), bias: p.v(w.fc2B),
                          rows: r, inDim: hidden, outDim: d)
            applyDropPath(out, keep: a.keep2, rate: rate, rng: &rng)
            addForward(out: out, out, a.x1.data, count: r * d)
        }
        return residual(blocks.count).data
    }

    /// Scales each sample's branch by 0 or 1/(1-rate) (timm's DropPath); records the scales.
    private func applyDropPath(_ branch: UnsafeMutablePointer<Float>, keep: Tensor, rate: Float,
                               rng: inout RandomStream) {
        guard rate > 0 else { keep.buffer.update(repeating: 1); return }
        dropMask(keep.data, count: batch, p: rate, rng: &rng)
        scaleGroupsForward(out: branch, input: branch, scale: keep.data, groups: batch, size: tokens * width)
    }

    /// Backward through blocks `depth - 1` down to `lowest`. dOut (B,N,D) is the gradient of the
    /// stack's output; returns the gradient of block `lowest`'s input (a buffer owned by the stack).
    /// Parameter gradients accumulate. Blocks below `lowest` get no gradient and cost nothing.
    func backward(_ p: ParameterStore, dOut: UnsafePointer<Float>, lowest: Int = 0) -> UnsafeMutablePointer<Float> {
        precondition(training, "backward needs a training-mode forward")
        let r = batch * tokens, d = width
        if scratch == nil {
            scratch = (Tensor([r, d]), Tensor([r, d]), Tensor([r, d]), Tensor([r, d]), Tensor([r, 3 * d]),
                       Tensor([r, hidden]), Tensor([r, hidden]))
        }
        let s = scratch!
        let dx = s.dX.data
        dx.update(from: dOut, count: r * d)
        for i in stride(from: blocks.count - 1, through: lowest, by: -1) {
            let w = blocks[i], a = acts[i], x = residual(i).data
            // out = x1 + keep2 * fc2(g)
            let dBranch = scaledBranchGrad(dx, keep: a.keep2, into: s.dBranch)
            s.dG.zero()
            linearBackward(dInput: s.dG.data, dWeight: p.g(w.fc2W), dBias: p.g(w.fc2B), dOut: dBranch,
                           input: a.g.data, weight: p.v(w.fc2W), rows: r, inDim: hidden, outDim: d)
            s.dH.zero()
            geluBackward(dInput: s.dH.data, dOut: s.dG.data, input: a.h.data, count: r * hidden)
            s.dLn.zero()
            linearBackward(dInput: s.dLn.data, dWeight: p.g(w.fc1W), dBias: p.g(w.fc1B), dOut: s.dH.data,
                           input: a.ln2.data, weight: p.v(w.fc1W), rows: r, inDim: d, outDim: hidden)
            layerNormBackward(dInput: dx, dWeight: p.g(w.norm2W), dBias: p.g(w.norm2B), dOut: s.dLn.data,
                              input: a.x1.data, weight: p.v(w.norm2W), mean: a.mean2.data, rstd: a.rstd2.data,
                              rows: r, width: d)
            // x1 = x + keep1 * proj(attn(norm1(x)))
            let dBranch1 = scaledBranchGrad(dx, keep: a.keep1, into: s.dBranch)
            s.dAtt.zero()
            linearBackward(dInput: s.dAtt.data, dWeight: p.g(w.projW), dBias: p.g(w.projB), dOut: dBranch1,
                           input: a.att.data, weight: p.v(w.projW), rows: r, inDim: d, outDim: d)
            s.dQKV.zero()
            attentionBackward(dQKV: s.dQKV.data, dOut: s.dAtt.data, qkv: a.qkv.data, probs: a.probs.data,
                              batch: batch, tokens: tokens, width: d, heads: heads)
            s.dLn.zero()
            linearBackward(dInput: s.dLn.data, dWeight: p.g(w.qkvW), dBias: p.g(w.qkvB), dOut: s.dQKV.data,
                           input: a.ln1.data, weight: p.v(w.qkvW), rows: r, inDim: d, outDim: 3 * d)
            layerNormBackward(dInput: dx, dWeight: p.g(w.norm1W), dBias: p.g(w.norm1B), dOut: s.dLn.data,
                              input: x, weight: p.v(w.norm1W), mean: a.mean1.data, rstd: a.rstd1.data,
                              rows: r, width: d)
        }
        return dx
    }

    /// The gradient of a drop-path branch: dOut itself when nothing was dropped, else scaled.
    private func scaledBranchGrad(_ dOut: UnsafeMutablePointer<Float>, keep: Tensor, into buffer: Tensor)
        -> UnsafeMutablePointer<Float> {
        if keep.buffer.allSatisfy({ $0 == 1 }) { return dOut }
        scaleGroupsForward(out: buffer.data, input: dOut, scale: keep.data, groups: batch, size: tokens * width)
        return buffer.data
    }
}
