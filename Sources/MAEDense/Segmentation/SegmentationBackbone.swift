import MAEKernels
import MAEModels

/// The shared ViT as mmseg's `MAE` backbone (mmseg/models/backbones/mae.py, a BEiT subclass): the
/// cls token stays in the sequence, abs pos_embed is resized at load (cls row kept, `loadModel`),
/// no final norm, and the outputs of blocks `outIndices` become (B, D, H/P, W/P) maps with the cls
/// token dropped. Drop path is the model's (linspace(0, rate, depth) per block).
///
/// BEiT's layer scale (gamma_1 / gamma_2) and relative position bias table are the ViT's options
/// (`ViTConfig.beit`): off for MAE's plain ViT, on for mmseg's MAE (zero table, gamma init_values
/// 1.0, both learnable). With the bias the input must be the bias's window (mmseg builds the
/// backbone at img_size = the crop and cannot run another grid either): `checkInput`.
public final class SegmentationBackbone {
    public let vit: VisionTransformer
    /// The blocks whose outputs feed the neck, lowest first.
    public let outIndices: [Int]

    public init(vit: VisionTransformer, outIndices: [Int]? = nil) {
        let depth = vit.config.depth
        let indices = outIndices ?? Self.defaultOutIndices(depth: depth)
        precondition(indices.allSatisfy { (0..<depth).contains($0) }, "out indices \(indices) of a \(depth)-block ViT")
        self.vit = vit
        self.outIndices = indices
    }

    /// mmseg's out_indices: ViT-B (12 blocks) [3, 5, 7, 11], ViT-L (24) [7, 11, 15, 23], i.e. blocks
    /// depth x (4, 6, 8, 12) / 12 - 1; the shipped 6-block models give [1, 2, 3, 5].
    public static func defaultOutIndices(depth: Int) -> [Int] {
        [4, 6, 8, 12].map { max(depth * $0 / 12 - 1, 0) }
    }

    /// mmseg's name for a parameter of the ViT's layout (tools/model_converters/beit2mmseg.py):
    /// blocks -> layers, norm1/2 -> ln1/2, mlp.fc1 -> ffn.layers.0.0, mlp.fc2 -> ffn.layers.1,
    /// patch_embed.proj -> patch_embed.projection, the final norm -> ln1 (BEiT's final_norm), all
    /// under `backbone.`.
    public static func mmsegName(_ name: String) -> String {
        var n = name
        if n.hasPrefix("blocks.") { n = "layers." + n.dropFirst("blocks.".count) }
        for (old, new) in [(".norm1.", ".ln1."), (".norm2.", ".ln2."), (".mlp.fc1.", ".ffn.layers.0.0."),
                           (".mlp.fc2.", ".ffn.layers.1."), ("patch_embed.proj.", "patch_embed.projection.")] {
            n = n.replacingOccurrences(of: old, with: new)
        }
        if n.hasPrefix("norm.") { n = "ln1." + n.dropFirst("norm.".count) }
        return "backbone." + n
    }

    /// The ViT's parameters under their mmseg names, in the ViT's own layout order (so the backbone's
    /// values are one contiguous block that `load`/`store` copy).
    public func addParameters(to layout: inout ParameterLayout) {
        for spec in vit.params.specs { layout.add(Self.mmsegName(spec.name), spec.shape, trainable: spec.trainable) }
    }

    /// Refuses an input the backbone cannot run: with the relative position bias, an H x W input
    /// whose patch grid is not the bias's W x W window.
    public func checkInput(height h: Int, width w: Int) throws {
        let p = vit.config.patchSize
        guard let window = vit.config.beit?.relativePositionWindow, h / p != window || w / p != window else { return }
        throw ModelError.shapeMismatch("the backbone's relative position bias is for a \(window * p) x \(window * p) px input (a \(window) x \(window) patch grid), so it cannot run a \(h) x \(w) px one (mmseg's MAE cannot either)")
    }

    /// One forward: block outputs as maps, and what the backward needs.
    public struct Pass {
        public let encoder: EncoderContext
        /// (B, D, H/P, W/P) per out index, stride P.
        public let maps: [FeatureMap]
    }

    /// images (B, 3, H, W), H and W multiples of the patch. `training` runs drop path from `seed`.
    public func forward(images: UnsafePointer<Float>, batch b: Int, height h: Int, width w: Int,
                        training: Bool, seed: UInt64) -> Pass {
        let ctx = vit.forwardEncoder(images: images, batch: b, height: h, width: w, blocks: outIndices,
                                     finalOutput: false, training: training, seed: seed)
        let p = vit.config.patchSize
        let maps = outIndices.map { i in
            FeatureMap(tokensToMap(ctx.blockOutput(i), batch: b, prefix: ctx.prefixTokens, height: h / p, width: w / p),
                       stride: p)
        }
        return Pass(encoder: ctx, maps: maps)
    }

    /// Backward from the gradient of each map (B, D, H/P, W/P), in `outIndices` order, into the ViT's grads.
    public func backward(_ pass: Pass, mapGradients: [Tensor]) {
        precondition(mapGradients.count == outIndices.count, "\(mapGradients.count) gradients for \(outIndices.count) maps")
        let ctx = pass.encoder
        var blockGradients: [Int: Tensor] = [:]
        for (k, i) in outIndices.enumerated() {
            let g = mapGradients[k]
            blockGradients[i] = mapToTokens(g, prefix: ctx.prefixTokens)
        }
        vit.backwardEncoder(ctx, blockGradients: blockGradients)
    }
}

/// (B, T + Gh*Gw, D) tokens (any shape holding them in that order) -> (B, D, Gh, Gw), the T prefix tokens dropped.
public func tokensToMap(_ tokens: Tensor, batch b: Int, prefix t: Int, height gh: Int, width gw: Int) -> Tensor {
    let l = gh * gw, n = t + l, d = tokens.count / (b * n)
    precondition(tokens.count == b * n * d, "\(tokens.shape) tokens for \(b) x (\(t) + \(gh)x\(gw))")
    let out = Tensor([b, d, gh, gw])
    for bi in 0..<b {
        let src = tokens.data + (bi * n + t) * d, dst = out.data + bi * d * l
        for j in 0..<l { for c in 0..<d { dst[c * l + j] = src[j * d + c] } }
    }
    return out
}

/// The adjoint of `tokensToMap`: (B, D, Gh, Gw) -> (B, T + Gh*Gw, D) with zero prefix rows.
public func mapToTokens(_ map: Tensor, prefix t: Int) -> Tensor {
    let b = map.shape[0], d = map.shape[1], l = map.shape[2] * map.shape[3], n = t + l
    let out = Tensor([b, n, d])
    for bi in 0..<b {
        let src = map.data + bi * d * l, dst = out.data + (bi * n + t) * d
        for j in 0..<l { for c in 0..<d { dst[j * d + c] = src[c * l + j] } }
    }
    return out
}
