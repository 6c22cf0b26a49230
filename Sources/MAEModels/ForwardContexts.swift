import MAEKernels
import MAEFormats

// What one forward of a `VisionTransformer` returns: its outputs and everything its backward reads.
// The model keeps no batch, mask or activation between calls, so any number of contexts can be in
// flight and backpropagated in any order. A context's tensors are its own (read them, do not write).

/// One `forwardEncoder` pass: the outputs asked for, with the mask, grid and activations.
public final class EncoderContext {
    public let batch: Int
    /// Input image height and width (pixels).
    public let height, width: Int
    /// The visible patches (all of them when the forward had no mask).
    public let mask: PatchMask
    /// T: the prefix tokens (cls, dist) in the sequence; 0 when they were dropped.
    public let prefixTokens: Int
    /// The block outputs kept for `blockOutput`.
    public let blocks: [Int]
    public var training: Bool { stack.training }
    /// N = T + Lk tokens per image.
    public var tokens: Int { prefixTokens + mask.keepCount }

    /// The last block's output after the final norm, when the model has one.
    struct Normed {
        let output: Tensor
        let mean, rstd: Tensor
    }

    let stack: StackPass
    let patches: Tensor           // (B*Lk, C*P*P) in conv-weight order
    let position: Tensor?         // (T+Gh*Gw, D) pos_embed rows used, nil when the stored table itself
    /// The forward ran every block (`finalOutput`).
    let ranAll: Bool
    let normed: Normed?
    let rng: RandomStream         // drop path's stream after the encoder, continued by the decoder

    init(batch: Int, height: Int, width: Int, mask: PatchMask, prefixTokens: Int, blocks: [Int], stack: StackPass,
         patches: Tensor, position: Tensor?, ranAll: Bool, normed: Normed?, rng: RandomStream) {
        self.batch = batch; self.height = height; self.width = width; self.mask = mask
        self.prefixTokens = prefixTokens; self.blocks = blocks; self.stack = stack
        self.patches = patches; self.position = position; self.ranAll = ranAll; self.normed = normed; self.rng = rng
    }

    /// Block i's output tokens (B,N,D) before the final norm, for i in `blocks`.
    public func blockOutput(_ i: Int) -> Tensor {
        precondition(blocks.contains(i), "block \(i) was not asked for (\(blocks))")
        return stack.output(i)
    }

    /// Tokens (B,N,D) after the final `norm` when the model has one (else the last block's output),
    /// for a forward with `finalOutput`.
    public var output: Tensor {
        precondition(ranAll, "the forward stopped before the last block (finalOutput false)")
        return normed?.output ?? stack.output(stack.ran - 1)
    }
}

/// What `forwardFeatures` keeps of one block's pooling.
struct PooledBlock {
    let block: Int
    let out: Tensor                        // (B,D) its feature
    let stats: (mean: Tensor, rstd: Tensor)?  // of `norm` (B*N rows) or `fc_norm` (B rows)
    let pooled: Tensor?                    // (B,D) token mean before fc_norm (avg pooling without norm)
}

/// One `forwardFeatures` / `forwardLogits` pass, and the loss `classificationLoss` computed on it.
public final class FeaturesContext {
    public let encoder: EncoderContext
    public let pooling: Pooling
    /// (B, k*D): per image the features of the last k blocks, lowest block first.
    public let features: Tensor
    /// (B,K) after `head`, from `forwardLogits`.
    public internal(set) var logits: Tensor?
    let slots: [PooledBlock]
    var loss: (probs: Tensor, targets: Tensor)?   // (B,K) each, from classificationLoss

    init(encoder: EncoderContext, pooling: Pooling, features: Tensor, slots: [PooledBlock]) {
        self.encoder = encoder; self.pooling = pooling; self.features = features; self.slots = slots
    }
}

/// One `forwardDecoder` pass (MAE pretraining and visualisation) on an encoder context.
public final class DecoderContext {
    public let encoder: EncoderContext
    /// (B,L,P*P*C) per-patch pixel predictions, in patch order.
    public let pred: Tensor
    let stack: StackPass                       // its last output (B,1+L,Dd) feeds decoder_norm
    let normed: Tensor                         // (B,1+L,Dd) after decoder_norm
    let stats: (mean: Tensor, rstd: Tensor)
    var target: Tensor?                        // (B,L,P*P*C) normalised target, from forwardLoss

    init(encoder: EncoderContext, pred: Tensor, stack: StackPass, normed: Tensor, stats: (mean: Tensor, rstd: Tensor)) {
        self.encoder = encoder; self.pred = pred; self.stack = stack; self.normed = normed; self.stats = stats
    }
}
