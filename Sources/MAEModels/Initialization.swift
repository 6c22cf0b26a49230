import Foundation
import MAEKernels

/// MAE's fixed 2-D sin-cos position embedding (get_2d_sincos_pos_embed) with a zero cls row:
/// (1 + G*G, D); the first half of the channels encodes the column index, the second the row.
public func sinCosPositionEmbedding(width d: Int, grid g: Int) -> [Float] {
    precondition(d % 4 == 0, "sin-cos position embedding needs a width divisible by 4")
    let quarter = d / 4
    let omega = (0..<quarter).map { 1 / pow(10000.0, Double($0) / Double(quarter)) }
    var out = [Float](repeating: 0, count: (1 + g * g) * d)
    for row in 0..<g {
        for col in 0..<g {
            let base = (1 + row * g + col) * d
            for (half, pos) in [(0, col), (1, row)] {
                for k in 0..<quarter {
                    let a = Double(pos) * omega[k]
                    out[base + half * d / 2 + k] = Float(sin(a))
                    out[base + half * d / 2 + quarter + k] = Float(cos(a))
                }
            }
        }
    }
    return out
}

extension VisionTransformer {
    /// MAE's initialize_weights: sin-cos position tables, xavier-uniform Linear and patch-embedding
    /// weights (the latter viewed as [D, C*P*P]), zero biases, unit LayerNorms, tokens ~ N(0, 0.02),
    /// and the head ~ truncated N(0, headStd) (MAE fine-tuning uses 2e-5, the linear probe 0.01);
    /// ViTDet's rel-pos tables zero (rel_pos_zero_init); BEiT's bias tables zero and layer scales at
    /// their init value, as mmseg's MAE. Only this model's parameters (those under
    /// `prefix`) of a shared store are touched.
    public func initializeWeights(seed: UInt64, headStd: Float = 2e-5) {
        var rng = RandomStream(seed: seed)
        for spec in params.specs where spec.name.hasPrefix(prefix) {
            let v = params.value(spec.name)
            let name = String(spec.name.dropFirst(prefix.count))
            if name.hasSuffix("attn.rel_pos_h") || name.hasSuffix("attn.rel_pos_w")
                || name.hasSuffix("attn.relative_position_bias_table") {
                v.update(repeating: 0)
            } else if name.hasSuffix(".gamma_1") || name.hasSuffix(".gamma_2") {
                v.update(repeating: config.beit?.layerScale ?? 1)
            } else if name == "pos_embed" {
                // The table's first row is the cls token's (zeros); a distilled model's extra prefix row too.
                let table = sinCosPositionEmbedding(width: config.embedDim, grid: config.gridSize)
                let extra = v.count - table.count
                for i in 0..<extra { v[i] = 0 }
                for i in 0..<table.count { v[extra + i] = table[i] }
            } else if name == "decoder_pos_embed", let dd = config.decoder?.embedDim {
                let table = sinCosPositionEmbedding(width: dd, grid: config.gridSize)
                for i in 0..<v.count { v[i] = table[i] }
            } else if name == "cls_token" || name == "dist_token" || name == "mask_token" {
                for i in 0..<v.count { v[i] = Float(rng.normal()) * 0.02 }
            } else if name == "head.weight" {
                for i in 0..<v.count { v[i] = truncatedNormal(&rng) * headStd }
            } else if spec.shape.count >= 2 {
                let fanOut = spec.shape[0], fanIn = spec.count / fanOut
                let bound = Float((6.0 / Double(fanIn + fanOut)).squareRoot())
                for i in 0..<v.count { v[i] = (rng.nextFloat() * 2 - 1) * bound }
            } else if name.hasSuffix("norm1.weight") || name.hasSuffix("norm2.weight") || name.hasSuffix("norm.weight") {
                v.update(repeating: 1)
            } else {
                v.update(repeating: 0)
            }
        }
    }
}

/// A standard normal truncated to [-2, 2] (timm's trunc_normal_ with std 1), by rejection.
func truncatedNormal(_ rng: inout RandomStream) -> Float {
    while true {
        let x = Float(rng.normal())
        if abs(x) <= 2 { return x }
    }
}

extension VisionTransformer {
    /// This model with BEiT's options on (mmseg's MAE backbone built from an MAE checkpoint): a new
    /// model of the same architecture plus `options`, every parameter this one has copied, the new
    /// bias tables zero and the gammas at `options.layerScale` (mmseg's MAE init: MAEAttention keeps
    /// the table at zero, gamma = init_values), and this model's precision and attention settings.
    public func withBEiTOptions(_ options: BEiTOptions) throws -> VisionTransformer {
        var c = config
        c.beit = options
        let model = try VisionTransformer(config: c)
        for spec in model.params.specs {
            let v = model.params.value(spec.name)
            if let own = params.spec(spec.name) {
                v.baseAddress!.update(from: params.values.data + own.offset, count: own.count)
            } else if spec.name.hasSuffix(".gamma_1") || spec.name.hasSuffix(".gamma_2") {
                v.update(repeating: options.layerScale ?? 1)
            } else {
                v.update(repeating: 0)
            }
        }
        model.precision = precision
        model.fusedAttentionTokens = fusedAttentionTokens
        model.lowestTrainedBlock = lowestTrainedBlock
        model.dropPath = dropPath
        return model
    }
}
