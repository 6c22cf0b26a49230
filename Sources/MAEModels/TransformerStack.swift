import Foundation
import MAEKernels

extension ParameterLayout {
    /// Appends `depth` pre-norm transformer blocks, 12 tensors each: `PREFIX.{i}.norm1.weight`, ...;
    /// with `relPosLengths[i]` = L also ViTDet's `PREFIX.{i}.attn.rel_pos_h` / `rel_pos_w` (L, head
    /// width), zero-initialised (detectron2 rel_pos_zero_init); with `relPosBiasRows` = L BEiT's
    /// `PREFIX.{i}.attn.relative_position_bias_table` (L, heads); with `layerScale` BEiT's
    /// `PREFIX.{i}.gamma_1` / `gamma_2` (D).
    mutating func addBlocks(prefix: String, depth: Int, width d: Int, hidden: Int, heads: Int = 0,
                            relPosLengths: [Int?] = [], layerScale: Bool = false, relPosBiasRows: Int? = nil) {
        for i in 0..<depth {
            let p = "\(prefix).\(i)."
            add(p + "norm1.weight", [d]); add(p + "norm1.bias", [d])
            add(p + "attn.qkv.weight", [3 * d, d]); add(p + "attn.qkv.bias", [3 * d])
            add(p + "attn.proj.weight", [d, d]); add(p + "attn.proj.bias", [d])
            if i < relPosLengths.count, let length = relPosLengths[i] {
                precondition(heads > 0, "rel-pos tables need the head count")
                add(p + "attn.rel_pos_h", [length, d / heads]); add(p + "attn.rel_pos_w", [length, d / heads])
            }
            if let rows = relPosBiasRows {
                precondition(heads > 0, "a relative position bias table needs the head count")
                add(p + "attn.relative_position_bias_table", [rows, heads])
            }
            if layerScale { add(p + "gamma_1", [d]); add(p + "gamma_2", [d]) }
            add(p + "norm2.weight", [d]); add(p + "norm2.bias", [d])
            add(p + "mlp.fc1.weight", [hidden, d]); add(p + "mlp.fc1.bias", [hidden])
            add(p + "mlp.fc2.weight", [d, hidden]); add(p + "mlp.fc2.bias", [d])
        }
    }
}

/// Offsets of one pre-norm transformer block's parameters (keys `PREFIX.{i}.norm1.weight`, ...).
struct BlockParameters {
    let norm1W, norm1B, qkvW, qkvB, projW, projB, norm2W, norm2B, fc1W, fc1B, fc2W, fc2B: Int
    /// ViTDet's rel-pos tables (L, Dh) per axis, when the block has them.
    let relPos: (h: Int, w: Int, length: Int)?
    /// BEiT's relative position bias table (L, H), when the block has one.
    let relPosBias: Int?
    /// BEiT's layer scales gamma_1, gamma_2 (D), when the block has them.
    let layerScale: (gamma1: Int, gamma2: Int)?

    /// Reads the offsets of block `prefix` (e.g. "blocks.3") from a layout made by `addBlocks`.
    init(_ layout: ParameterLayout, prefix: String) {
        let at = { (name: String) in layout.offset("\(prefix).\(name)")! }
        norm1W = at("norm1.weight"); norm1B = at("norm1.bias")
        qkvW = at("attn.qkv.weight"); qkvB = at("attn.qkv.bias")
        projW = at("attn.proj.weight"); projB = at("attn.proj.bias")
        norm2W = at("norm2.weight"); norm2B = at("norm2.bias")
        fc1W = at("mlp.fc1.weight"); fc1B = at("mlp.fc1.bias")
        fc2W = at("mlp.fc2.weight"); fc2B = at("mlp.fc2.bias")
        relPos = layout.offset("\(prefix).attn.rel_pos_h").map { h in
            (h, at("attn.rel_pos_w"), layout.specs.first { $0.offset == h }!.shape[0])
        }
        relPosBias = layout.offset("\(prefix).attn.relative_position_bias_table")
        layerScale = layout.offset("\(prefix).gamma_1").map { ($0, at("gamma_2")) }
    }
}

/// How one block's attention sees a pass's tokens (B, N = Gh Gw, D): over the whole sequence or in
/// w x w windows of the token grid (ViTDet), with or without the decomposed rel-pos bias, fused
/// (logsumexp kept) or materialised (probs kept). Blocks with the same geometry share buffers in
/// inference.
struct AttentionGeometry: Hashable {
    let batch, tokens: Int
    /// The token grid (Gh, Gw); (0, 0) when the tokens form none (a cls token, a masked encoder).
    let gridHeight, gridWidth: Int
    /// Window side; 0 for global attention.
    let window: Int
    let relPos: Bool
    /// BEiT's relative position bias: a dense (H, N, N) bias shared by the batch.
    let denseBias: Bool
    /// BEiT's layer scale on both branches.
    let layerScale: Bool
    let fused: Bool

    /// The window partition of the (B, Gh, Gw, channels) token map; nil for global attention.
    func partition(channels: Int) -> WindowPartitionSize? {
        window > 0 ? WindowPartitionSize(batch: batch, height: gridHeight, width: gridWidth, channels: channels,
                                         window: window) : nil
    }
    /// Sequences the attention runs over: B, or B * windows.
    var attentionBatch: Int { partition(channels: 1)?.windows ?? batch }
    /// Tokens per sequence: N, or w * w.
    var attentionTokens: Int { window > 0 ? window * window : tokens }
    /// The grid one attention sequence forms (the rel-pos terms' query / key grid).
    var attentionGrid: (h: Int, w: Int) { window > 0 ? (window, window) : (gridHeight, gridWidth) }
    var attentionRows: Int { attentionBatch * attentionTokens }
}

/// What one block keeps from its forward for the backward. R = B * N rows; Ra = the attention's
/// rows (R, or B * windows * w * w for a window block, padding included).
final class BlockActivations {
    let ln1, ln2, att, x1: Tensor          // (R,D)
    let mean1, rstd1, mean2, rstd2: Tensor // (R)
    /// Window blocks: the attention's output in windows (Ra,D) before unpartitioning into `att`;
    /// nil for global blocks (att serves).
    let windowsOut: Tensor?
    /// (Ra,3D); a window block's in windows, its padded tokens' rows the qkv bias.
    let qkv: Tensor
    /// The attention's softmax for the backward: probs (Ba,H,Na,Na), or logsumexp (Ba,H,Na) when fused.
    let scores: Tensor
    /// Rel-pos: the gathered Rh (sH, sH, Dh), Rw (sW, sW, Dh) and the terms relH (Ba*H, Na, sH), relW (Ba*H, Na, sW).
    let rh, rw, relH, relW: Tensor?
    /// Layer scale: the branches before their gamma, proj's output and fc2's (R,D).
    let branch1, branch2: Tensor?
    let h, g: Tensor                       // (R,hidden) fc1 output, GELU output
    let keep1, keep2: Tensor               // (B) drop-path scales of the two branches

    init(_ geo: AttentionGeometry, width: Int, hidden: Int, heads: Int) {
        let r = geo.batch * geo.tokens, ra = geo.attentionRows, ba = geo.attentionBatch, na = geo.attentionTokens
        ln1 = Tensor([r, width]); ln2 = Tensor([r, width]); att = Tensor([r, width]); x1 = Tensor([r, width])
        mean1 = Tensor([r]); rstd1 = Tensor([r]); mean2 = Tensor([r]); rstd2 = Tensor([r])
        windowsOut = geo.window > 0 ? Tensor([ra, width]) : nil
        qkv = Tensor([ra, 3 * width])
        scores = Tensor(geo.fused ? [ba, heads, na] : [ba, heads, na, na])
        let (sh, sw) = geo.attentionGrid, hd = width / heads
        rh = geo.relPos ? Tensor([sh, sh, hd]) : nil
        rw = geo.relPos ? Tensor([sw, sw, hd]) : nil
        relH = geo.relPos ? Tensor([ba * heads, na, sh]) : nil
        relW = geo.relPos ? Tensor([ba * heads, na, sw]) : nil
        branch1 = geo.layerScale ? Tensor([r, width]) : nil
        branch2 = geo.layerScale ? Tensor([r, width]) : nil
        h = Tensor([r, hidden]); g = Tensor([r, hidden])
        keep1 = Tensor([geo.batch]); keep2 = Tensor([geo.batch])
    }

    /// The attention's output rows (Ra,D).
    var attentionOut: Tensor { windowsOut ?? att }
}

/// The activation buffers of one pass through a stack, for one (B, N), grid and mode: every block's
/// set and every residual in training mode; in inference one set per attention geometry, shared by
/// the blocks of that geometry, and two ping-pong residuals.
final class StackBuffers {
    let batch, tokens: Int
    let training: Bool
    /// Each block's attention geometry.
    let geometries: [AttentionGeometry]
    /// acts[i] is block i's set (the same object for blocks of one geometry in inference).
    let acts: [BlockActivations]
    /// Every block's attention runs fused (FlashAttention.swift) and keeps logsumexp, not probs.
    var fused: Bool { geometries.allSatisfy(\.fused) }
    /// residuals[i] is block i's input; residuals[i + 1] its output (mod 2 in inference).
    var residuals: [Tensor]
    /// BEiT's relative position bias (H,N,N) of the block at hand, gathered from its table in the
    /// forward and again in the backward (one buffer for every block, not one per block).
    let bias: Tensor?
    /// Window blocks' qkv (R,3D) of the map's tokens before it is partitioned into windows (one
    /// buffer for every block: only the partitioned qkv is kept).
    let windowQKV: Tensor?

    init(batch b: Int, tokens n: Int, training t: Bool, geometries: [AttentionGeometry], width: Int, hidden: Int,
         heads: Int) {
        batch = b; tokens = n; training = t; self.geometries = geometries
        var shared: [AttentionGeometry: BlockActivations] = [:]
        acts = geometries.map { geo in
            if !t, let a = shared[geo] { return a }
            let a = BlockActivations(geo, width: width, hidden: hidden, heads: heads)
            shared[geo] = a
            return a
        }
        residuals = (0..<(t ? geometries.count + 1 : 2)).map { _ in Tensor([b * n, width]) }
        bias = geometries.contains(where: \.denseBias) ? Tensor([heads, n, n]) : nil
        windowQKV = geometries.contains { $0.window > 0 } ? Tensor([b * n, 3 * width]) : nil
    }
}

/// The one spare set of buffers a stack keeps between passes: a pass that ends hands its buffers
/// back here, the next pass of the same shape takes them (fresh multi-MB allocations page-fault).
/// Holds at most one set, so a change of batch size frees the old one.
final class SpareBuffers: @unchecked Sendable {
    private let lock = NSLock()
    private var spare: StackBuffers?

    func take(batch b: Int, tokens n: Int, training t: Bool, geometries: [AttentionGeometry]) -> StackBuffers? {
        lock.lock(); defer { lock.unlock() }
        guard let s = spare, s.batch == b, s.tokens == n, s.training == t, s.geometries == geometries else { return nil }
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
/// ViTDet's blocks (detectron2 vit.py `Block`) are the same with two options per block: `windows[i]`
/// > 0 runs the attention inside w x w windows of the token grid (norm1's output zero-padded to
/// multiples of w, partitioned, attention batched over all windows with the padded tokens unmasked,
/// unpartitioned and cropped before proj; qkv runs on the map's tokens alone and the partition
/// gives each padded token the qkv bias, its output on a zero row), and rel-pos tables add the decomposed bias
/// q . Rh[qh, kh] + q . Rw[qw, kw] (unscaled q) to the scores. Such blocks always run the fused
/// attention, which takes that bias tile by tile.
/// BEiT's blocks (mmseg beit.py `BEiTTransformerEncoderLayer`) add two options: layer scale,
/// x1 = x + DropPath(gamma_1 * proj(...)) and out = x1 + DropPath(gamma_2 * fc2(...)), and the
/// relative position bias, a dense (H, N, N) bias gathered from the block's table by BEiT's index
/// and added to the scores on either attention path.
/// Each forward is a `StackPass` holding its own activations (every block's in training mode, for
/// the backward; one reused set in inference); the stack keeps only parameter offsets, one spare
/// set of buffers and the backward's scratch.
final class TransformerStack {
    let blocks: [BlockParameters]
    let width, hidden, heads: Int
    /// Each block's attention window side in tokens; 0 for global attention (every block of MAE's ViT).
    let windows: [Int]
    /// Stochastic depth rate of the last block (linearly increasing from 0, as timm).
    var dropPath: Float = 0
    /// The forward's rows of the global batch; drop path draws for the whole batch (see `VisionTransformer.batchShard`).
    var batchShard: BatchShard?
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

    /// BEiT's relative position bias of the blocks that have a table, and its fixed (N, N) index.
    let relPosBias: RelPosBiasSize?
    private let relPosBiasIndex: [Int32]

    private let spare = SpareBuffers()
    private var scratch: BackwardScratch?

    /// The backward's gradient buffers for R rows, and those of the attention's own rows (Ra) by size.
    final class BackwardScratch {
        let dX, dLn, dBranch, dAtt, dH, dG: Tensor
        /// Layer scale: the gradient of a branch before its gamma (R,D).
        let dUnscaled: Tensor
        private var byName: [String: Tensor] = [:]

        init(rows r: Int, width d: Int, hidden: Int) {
            dX = Tensor([r, d]); dLn = Tensor([r, d]); dBranch = Tensor([r, d]); dAtt = Tensor([r, d])
            dH = Tensor([r, hidden]); dG = Tensor([r, hidden]); dUnscaled = Tensor([r, d])
        }

        /// A zeroed buffer of `shape`, kept under `name` for the next call of that size.
        func zeroed(_ name: String, _ shape: [Int]) -> Tensor {
            let count = shape.reduce(1, *)
            if let t = byName[name], t.count == count { t.zero(); return t }
            let t = Tensor(shape)
            byName[name] = t
            return t
        }
    }

    /// The stack over the blocks `prefix.0` ..< `prefix.{depth}` of `layout` (see `addBlocks`).
    /// `windows`: per block, as the property (empty: all global). `relPosBias`: the window of the
    /// blocks' BEiT bias tables (required when they have tables).
    init(_ layout: ParameterLayout, prefix: String, depth: Int, width: Int, hidden: Int, heads: Int, windows: [Int] = [],
         relPosBias: RelPosBiasSize? = nil) {
        precondition(windows.isEmpty || windows.count == depth, "\(windows.count) window sizes for \(depth) blocks")
        blocks = (0..<depth).map { BlockParameters(layout, prefix: "\(prefix).\($0)") }
        precondition(blocks.allSatisfy { ($0.relPosBias != nil) == (relPosBias != nil) },
                     "relative position bias tables without their window, or a window without tables")
        self.width = width
        self.hidden = hidden
        self.heads = heads
        self.windows = windows.isEmpty ? Array(repeating: 0, count: depth) : windows
        self.relPosBias = relPosBias
        relPosBiasIndex = relPosBias?.index() ?? []
    }

    /// True when some block needs the tokens as a grid (windows or rel-pos).
    var needsGrid: Bool { windows.contains { $0 > 0 } || blocks.contains { $0.relPos != nil } }

    /// A new pass for b sequences of n tokens; the caller fills `pass.input` (B,N,D), then calls `forward`.
    /// `grid` (Gh, Gw), Gh Gw = n: the tokens' grid, required when some block has windows or rel-pos.
    func begin(batch b: Int, tokens n: Int, training t: Bool, grid: (height: Int, width: Int)? = nil) -> StackPass {
        precondition(!needsGrid || grid.map { $0.height * $0.width == n } == true,
                     "window and rel-pos blocks need the \(n) tokens as a grid, not \(String(describing: grid))")
        precondition(relPosBias.map { $0.tokens == n } ?? true,
                     "the relative position bias is for \(relPosBias?.tokens ?? 0) tokens (cls + window), not \(n)")
        let geometries = blocks.indices.map { i in
            AttentionGeometry(batch: b, tokens: n, gridHeight: grid?.height ?? 0, gridWidth: grid?.width ?? 0,
                              window: windows[i], relPos: blocks[i].relPos != nil, denseBias: blocks[i].relPosBias != nil,
                              layerScale: blocks[i].layerScale != nil,
                              fused: windows[i] > 0 || blocks[i].relPos != nil || n >= fusedAttentionTokens)
        }
        let buffers = spare.take(batch: b, tokens: n, training: t, geometries: geometries)
            ?? StackBuffers(batch: b, tokens: n, training: t, geometries: geometries, width: width, hidden: hidden,
                            heads: heads)
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
            let a = pass.buffers.acts[i], geo = pass.buffers.geometries[i]
            let x = pass.residual(i).data, out = pass.residual(i + 1).data
            let rate = training && blocks.count > 1 ? dropPath * Float(i) / Float(blocks.count - 1) : 0
            layerNormForward(out: a.ln1.data, mean: a.mean1.data, rstd: a.rstd1.data, input: x,
                             weight: p.v(w.norm1W), bias: p.v(w.norm1B), rows: r, width: d)
            blockAttentionForward(p, w, a, geo, bias: pass.buffers.bias, windowQKV: pass.buffers.windowQKV, bf16: bf16)
            linearForward(out: (a.branch1 ?? a.x1).data, input: a.att.data, weight: p.v(w.projW), bias: p.v(w.projB),
                          rows: r, inDim: d, outDim: d, bf16: bf16)
            if let gamma = w.layerScale, let y = a.branch1 {
                scaleChannelsForward(out: a.x1.data, input: y.data, scale: p.v(gamma.gamma1), rows: r, width: d)
            }
            applyDropPath(a.x1.data, keep: a.keep1, rate: rate, batch: batch, tokens: tokens, rng: &rng)
            addForward(out: a.x1.data, a.x1.data, x, count: r * d)
            layerNormForward(out: a.ln2.data, mean: a.mean2.data, rstd: a.rstd2.data, input: a.x1.data,
                             weight: p.v(w.norm2W), bias: p.v(w.norm2B), rows: r, width: d)
            linearForward(out: a.h.data, input: a.ln2.data, weight: p.v(w.fc1W), bias: p.v(w.fc1B),
                          rows: r, inDim: d, outDim: hidden, bf16: bf16)
            geluForward(out: a.g.data, input: a.h.data, count: r * hidden)
            linearForward(out: a.branch2?.data ?? out, input: a.g.data, weight: p.v(w.fc2W), bias: p.v(w.fc2B),
                          rows: r, inDim: hidden, outDim: d, bf16: bf16)
            if let gamma = w.layerScale, let y = a.branch2 {
                scaleChannelsForward(out: out, input: y.data, scale: p.v(gamma.gamma2), rows: r, width: d)
            }
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
        if let shard = batchShard, !shard.isWhole {
            precondition(shard.count == batch, "a shard of \(shard.count) rows for a batch of \(batch)")
            var whole = [Float](repeating: 0, count: shard.total)
            whole.withUnsafeMutableBufferPointer { dropMask($0.baseAddress!, count: shard.total, p: rate, rng: &rng) }
            whole.withUnsafeBufferPointer { keep.data.update(from: $0.baseAddress! + shard.offset, count: batch) }
        } else {
            dropMask(keep.data, count: batch, p: rate, rng: &rng)
        }
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
            scratch = BackwardScratch(rows: r, width: d, hidden: hidden)
        }
        let s = scratch!
        let dx = s.dX.data
        dx.update(from: dOutputs[top]!, count: r * d)
        for i in stride(from: top, through: lowest, by: -1) {
            if i < top, let g = dOutputs[i] { addForward(out: dx, dx, g, count: r * d) }
            let w = blocks[i], a = pass.buffers.acts[i], geo = pass.buffers.geometries[i], x = pass.residual(i).data
            // out = x1 + keep2 * gamma2 * fc2(g)
            var dBranch = scaledBranchGrad(dx, keep: a.keep2, into: s.dBranch, batch: batch, tokens: tokens)
            if let gamma = w.layerScale, let y = a.branch2 {
                scaleChannelsBackward(dInput: s.dUnscaled.data, dScale: p.g(gamma.gamma2), dOut: dBranch, input: y.data,
                                      scale: p.v(gamma.gamma2), rows: r, width: d)
                dBranch = s.dUnscaled.data
            }
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
            // x1 = x + keep1 * gamma1 * proj(attn(norm1(x)))
            var dBranch1 = scaledBranchGrad(dx, keep: a.keep1, into: s.dBranch, batch: batch, tokens: tokens)
            if let gamma = w.layerScale, let y = a.branch1 {
                scaleChannelsBackward(dInput: s.dUnscaled.data, dScale: p.g(gamma.gamma1), dOut: dBranch1, input: y.data,
                                      scale: p.v(gamma.gamma1), rows: r, width: d)
                dBranch1 = s.dUnscaled.data
            }
            s.dAtt.zero()
            linearBackward(dInput: s.dAtt.data, dWeight: p.g(w.projW), dBias: p.g(w.projB), dOut: dBranch1,
                           input: a.att.data, weight: p.v(w.projW), rows: r, inDim: d, outDim: d, bf16: bf16)
            s.dLn.zero()
            blockAttentionBackward(p, w, a, geo, bias: pass.buffers.bias, dAtt: s.dAtt, dLn: s.dLn, scratch: s, bf16: bf16)
            layerNormBackward(dInput: dx, dWeight: p.g(w.norm1W), dBias: p.g(w.norm1B), dOut: s.dLn.data,
                              input: x, weight: p.v(w.norm1W), mean: a.mean1.data, rstd: a.rstd1.data,
                              rows: r, width: d)
        }
        return dx
    }

    // MARK: - The attention of one block

    private func relPosSizes(_ w: BlockParameters, _ geo: AttentionGeometry)
        -> (h: RelPosGatherSize, w: RelPosGatherSize, terms: RelPosTermsSize)? {
        guard let rel = w.relPos else { return nil }
        let (sh, sw) = geo.attentionGrid, hd = width / heads
        return (RelPosGatherSize(querySize: sh, keySize: sh, tableLength: rel.length, channels: hd),
                RelPosGatherSize(querySize: sw, keySize: sw, tableLength: rel.length, channels: hd),
                RelPosTermsSize(batch: geo.attentionBatch, width: width, heads: heads, gridHeight: sh, gridWidth: sw))
    }

    /// att (R,D) = attn(ln1): qkv of ln1 (partitioned into windows for a window block), the rel-pos
    /// terms from the unscaled q, the attention, and the windows put back (cropped).
    private func blockAttentionForward(_ p: ParameterStore, _ w: BlockParameters, _ a: BlockActivations,
                                       _ geo: AttentionGeometry, bias: Tensor?, windowQKV: Tensor?,
                                       bf16: BF16WeightCache?) {
        let d = width
        if let part = geo.partition(channels: 3 * d), let tokens = windowQKV {
            // detectron2 pads norm1's output with zeros before qkv, so a padded token's q, k, v are
            // the bias alone: qkv runs on the map's tokens and the partition writes the bias there.
            linearForward(out: tokens.data, input: a.ln1.data, weight: p.v(w.qkvW), bias: p.v(w.qkvB),
                          rows: geo.batch * geo.tokens, inDim: d, outDim: 3 * d, bf16: bf16)
            windowPartitionForward(windows: a.qkv.data, input: tokens.data, size: part, padding: p.v(w.qkvB))
        } else {
            linearForward(out: a.qkv.data, input: a.ln1.data, weight: p.v(w.qkvW), bias: p.v(w.qkvB),
                          rows: geo.attentionRows, inDim: d, outDim: 3 * d, bf16: bf16)
        }
        let size = FlashAttentionSize(batch: geo.attentionBatch, tokens: geo.attentionTokens, width: d, heads: heads)
        if let rel = w.relPos, let rs = relPosSizes(w, geo), let rh = a.rh, let rw = a.rw, let relH = a.relH, let relW = a.relW {
            relPosGatherForward(out: rh.data, table: p.v(rel.h), size: rs.h)
            relPosGatherForward(out: rw.data, table: p.v(rel.w), size: rs.w)
            relPosTermsForward(relH: relH.data, relW: relW.data, qkv: a.qkv.data, rh: rh.data, rw: rw.data, size: rs.terms)
            flashAttentionForward(out: a.attentionOut.data, logSumExp: a.scores.data, qkv: a.qkv.data,
                                  bias: .decomposed(relH: relH.data, relW: relW.data, height: rs.terms.queryHeight,
                                                    width: rs.terms.queryWidth), size: size)
        } else {
            let bias = gatherRelPosBias(p, w, into: bias)
            if geo.fused {
                flashAttentionForward(out: a.attentionOut.data, logSumExp: a.scores.data, qkv: a.qkv.data,
                                      bias: bias.map { .dense($0.data, sharedOverBatch: true) } ?? .none, size: size)
            } else {
                attentionForward(out: a.attentionOut.data, probs: a.scores.data, qkv: a.qkv.data, bias: bias?.data,
                                 batch: geo.attentionBatch, tokens: geo.attentionTokens, width: d, heads: heads,
                                 bf16: bf16 != nil)
            }
        }
        if let part = geo.partition(channels: width) {
            windowUnpartitionForward(out: a.att.data, windows: a.attentionOut.data, size: part)
        }
    }

    /// Accumulates dLn (R,D) += the gradient of ln1 from dAtt (R,D), the gradient of att, and the
    /// parameter gradients (qkv, the rel-pos tables through their gather).
    private func blockAttentionBackward(_ p: ParameterStore, _ w: BlockParameters, _ a: BlockActivations,
                                        _ geo: AttentionGeometry, bias: Tensor?, dAtt: Tensor, dLn: Tensor,
                                        scratch s: BackwardScratch, bf16: BF16WeightCache?) {
        let d = width, ra = geo.attentionRows
        var dOut = dAtt
        if let part = geo.partition(channels: width) {
            dOut = s.zeroed("dWindowsOut", [ra, d])
            windowUnpartitionBackward(dWindows: dOut.data, dOut: dAtt.data, size: part)
        }
        let dQKV = s.zeroed("dQKV", [ra, 3 * d])
        let size = FlashAttentionSize(batch: geo.attentionBatch, tokens: geo.attentionTokens, width: d, heads: heads)
        if let rel = w.relPos, let rs = relPosSizes(w, geo), let rh = a.rh, let rw = a.rw, let relH = a.relH, let relW = a.relW {
            let dRelH = s.zeroed("dRelH", relH.shape), dRelW = s.zeroed("dRelW", relW.shape)
            flashAttentionBackward(dQKV: dQKV.data, dBias: .decomposed(dRelH: dRelH.data, dRelW: dRelW.data),
                                   dOut: dOut.data, out: a.attentionOut.data, logSumExp: a.scores.data, qkv: a.qkv.data,
                                   bias: .decomposed(relH: relH.data, relW: relW.data, height: rs.terms.queryHeight,
                                                     width: rs.terms.queryWidth), size: size)
            let dRh = s.zeroed("dRh", rh.shape), dRw = s.zeroed("dRw", rw.shape)
            relPosTermsBackward(dQKV: dQKV.data, dRh: dRh.data, dRw: dRw.data, dRelH: dRelH.data, dRelW: dRelW.data,
                                qkv: a.qkv.data, rh: rh.data, rw: rw.data, size: rs.terms)
            relPosGatherBackward(dTable: p.g(rel.h), dOut: dRh.data, size: rs.h)
            relPosGatherBackward(dTable: p.g(rel.w), dOut: dRw.data, size: rs.w)
        } else {
            let bias = w.relPosBias == nil ? nil : bias
            let dBias = bias.map { s.zeroed("dBias", $0.shape) }
            if geo.fused {
                // The fused backward recomputes the scores, so it needs this block's bias again.
                let bias = gatherRelPosBias(p, w, into: bias)
                flashAttentionBackward(dQKV: dQKV.data, dBias: dBias.map { .dense($0.data) } ?? .none, dOut: dOut.data,
                                       out: a.attentionOut.data, logSumExp: a.scores.data, qkv: a.qkv.data,
                                       bias: bias.map { .dense($0.data, sharedOverBatch: true) } ?? .none, size: size)
            } else {
                attentionBackward(dQKV: dQKV.data, dBias: dBias?.data, dOut: dOut.data, qkv: a.qkv.data,
                                  probs: a.scores.data, batch: geo.attentionBatch, tokens: geo.attentionTokens,
                                  width: d, heads: heads, bf16: bf16 != nil)
            }
            if let table = w.relPosBias, let rpb = relPosBias, let dBias {
                relPosBiasBackward(dTable: p.g(table), dBias: dBias.data, index: relPosBiasIndex, size: rpb)
            }
        }
        var dTokens = dQKV, rows = ra
        if let part = geo.partition(channels: 3 * d) {
            // The windows' dQKV back onto the map's tokens; the padded tokens' goes to the qkv bias.
            rows = geo.batch * geo.tokens
            dTokens = s.zeroed("dWindowQKV", [rows, 3 * d])
            windowPartitionBackward(dInput: dTokens.data, dWindows: dQKV.data, size: part)
            windowPaddingBackward(dPadding: p.g(w.qkvB), dWindows: dQKV.data, size: part)
        }
        linearBackward(dInput: dLn.data, dWeight: p.g(w.qkvW), dBias: p.g(w.qkvB), dOut: dTokens.data,
                       input: a.ln1.data, weight: p.v(w.qkvW), rows: rows, inDim: d, outDim: 3 * d, bf16: bf16)
    }

    /// Block w's BEiT bias (H,N,N) gathered into `buffer`; nil when the block has none.
    private func gatherRelPosBias(_ p: ParameterStore, _ w: BlockParameters, into buffer: Tensor?) -> Tensor? {
        guard let table = w.relPosBias, let size = relPosBias, let buffer else { return nil }
        relPosBiasForward(out: buffer.data, table: p.v(table), index: relPosBiasIndex, size: size)
        return buffer
    }

    /// The gradient of a drop-path branch: dOut itself when nothing was dropped, else scaled.
    private func scaledBranchGrad(_ dOut: UnsafeMutablePointer<Float>, keep: Tensor, into buffer: Tensor,
                                  batch: Int, tokens: Int) -> UnsafeMutablePointer<Float> {
        if keep.buffer.allSatisfy({ $0 == 1 }) { return dOut }
        scaleGroupsForward(out: buffer.data, input: dOut, scale: keep.data, groups: batch, size: tokens * width)
        return buffer.data
    }
}
