import MAEFormats

/// How the classifier pools tokens.
public enum Pooling: String, Codable, CaseIterable, Sendable {
    /// The cls token after the final `norm` (MAE's linear probe, timm's default).
    case cls
    /// The mean of the patch tokens, then `fc_norm` (MAE fine-tuning with global_pool).
    case avg
}

/// The light transformer decoder MAE uses for pixel reconstruction.
public struct DecoderConfig: Codable, Equatable, Sendable {
    public var embedDim: Int
    public var depth: Int
    public var numHeads: Int
    public var mlpHidden: Int

    public init(embedDim: Int, depth: Int, numHeads: Int, mlpHidden: Int? = nil) {
        self.embedDim = embedDim
        self.depth = depth
        self.numHeads = numHeads
        self.mlpHidden = mlpHidden ?? 4 * embedDim
    }

    /// MAE's decoder for every released model: 512 wide, 8 blocks, 16 heads.
    public static let mae = DecoderConfig(embedDim: 512, depth: 8, numHeads: 16)
}

/// A Vision Transformer's architecture, as MAE's models_vit / models_mae define it.
public struct ViTConfig: Codable, Equatable, Sendable {
    public var imgSize: Int
    public var patchSize: Int
    public var inChans: Int = 3
    public var embedDim: Int
    public var depth: Int
    public var numHeads: Int
    public var mlpHidden: Int
    /// Classes of the linear head; 0 for a backbone without a head.
    public var numClasses: Int = 0
    public var pooling: Pooling = .cls
    /// Present for an MAE pretraining model (encoder + decoder).
    public var decoder: DecoderConfig?
    /// MAE's norm_pix_loss: targets normalised per patch.
    public var normPixLoss: Bool = true
    /// DeiT distilled (timm's VisionTransformerDistilled): a `dist_token` runs beside the cls token,
    /// with pos_embed rows 0 and 1 for the two; `cls` pooling still reads the cls token.
    public var distilled: Bool = false

    public init(imgSize: Int, patchSize: Int, inChans: Int = 3, embedDim: Int, depth: Int, numHeads: Int,
                mlpHidden: Int? = nil, numClasses: Int = 0, pooling: Pooling = .cls,
                decoder: DecoderConfig? = nil, normPixLoss: Bool = true, distilled: Bool = false) {
        self.imgSize = imgSize
        self.patchSize = patchSize
        self.inChans = inChans
        self.embedDim = embedDim
        self.depth = depth
        self.numHeads = numHeads
        self.mlpHidden = mlpHidden ?? 4 * embedDim
        self.numClasses = numClasses
        self.pooling = pooling
        self.decoder = decoder
        self.normPixLoss = normPixLoss
        self.distilled = distilled
    }

    private enum CodingKeys: String, CodingKey {
        case imgSize, patchSize, inChans, embedDim, depth, numHeads, mlpHidden, numClasses, pooling, decoder
        case normPixLoss, distilled
    }

    /// Reads mae-eval's config JSON; files written before `distilled` existed read as not distilled.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(imgSize: try c.decode(Int.self, forKey: .imgSize), patchSize: try c.decode(Int.self, forKey: .patchSize),
                  inChans: try c.decode(Int.self, forKey: .inChans), embedDim: try c.decode(Int.self, forKey: .embedDim),
                  depth: try c.decode(Int.self, forKey: .depth), numHeads: try c.decode(Int.self, forKey: .numHeads),
                  mlpHidden: try c.decode(Int.self, forKey: .mlpHidden),
                  numClasses: try c.decode(Int.self, forKey: .numClasses),
                  pooling: try c.decode(Pooling.self, forKey: .pooling),
                  decoder: try c.decodeIfPresent(DecoderConfig.self, forKey: .decoder),
                  normPixLoss: try c.decode(Bool.self, forKey: .normPixLoss),
                  distilled: try c.decodeIfPresent(Bool.self, forKey: .distilled) ?? false)
    }

    /// Tokens before the patches: cls, plus the dist token of a distilled model.
    public var numPrefixTokens: Int { distilled ? 2 : 1 }

    /// Patches per side.
    public var gridSize: Int { imgSize / patchSize }
    /// Patches per image (L).
    public var numPatches: Int { gridSize * gridSize }
    /// Values per patch (P * P * C), the reconstruction target's width.
    public var patchDim: Int { patchSize * patchSize * inChans }

    /// The model's parameters, named by MAE's checkpoint keys, in MAE's order: cls_token (and DeiT's
    /// dist_token), pos_embed (fixed in MAE pretraining), patch_embed, the blocks, `norm` (cls pooling
    /// or pretraining) or `fc_norm`, then the decoder and the head when configured. Allocates no
    /// tensors: `VisionTransformer.init` allocates from it, and `CheckpointInfo` checks a checkpoint
    /// against it, so the loader's check and the model agree. The head counts shape no parameter.
    public func parameterLayout() -> ParameterLayout {
        let d = embedDim, l = numPatches, pretraining = decoder != nil
        var layout = ParameterLayout()
        layout.add("cls_token", [1, 1, d])
        if distilled { layout.add("dist_token", [1, 1, d]) }
        // MAE pretraining keeps the sin-cos table fixed; fine-tuning learns it (timm / models_vit).
        layout.add("pos_embed", [1, numPrefixTokens + l, d], trainable: !pretraining)
        layout.add("patch_embed.proj.weight", [d, inChans, patchSize, patchSize])
        layout.add("patch_embed.proj.bias", [d])
        layout.addBlocks(prefix: "blocks", depth: depth, width: d, hidden: mlpHidden)
        let norm = pooling == .cls || pretraining ? "norm" : "fc_norm"
        layout.add("\(norm).weight", [d])
        layout.add("\(norm).bias", [d])
        if let dc = decoder {
            let dd = dc.embedDim
            layout.add("decoder_embed.weight", [dd, d])
            layout.add("decoder_embed.bias", [dd])
            layout.add("mask_token", [1, 1, dd])
            layout.add("decoder_pos_embed", [1, 1 + l, dd], trainable: false)
            layout.addBlocks(prefix: "decoder_blocks", depth: dc.depth, width: dd, hidden: dc.mlpHidden)
            layout.add("decoder_norm.weight", [dd])
            layout.add("decoder_norm.bias", [dd])
            layout.add("decoder_pred.weight", [patchDim, dd])
            layout.add("decoder_pred.bias", [patchDim])
        }
        if numClasses > 0 {
            layout.add("head.weight", [numClasses, d])
            layout.add("head.bias", [numClasses])
        }
        return layout
    }

    /// Checks the shapes fit together; the message is one sentence for the user.
    public func validate() throws {
        func fail(_ s: String) -> ModelError { .invalidConfig(s) }
        guard imgSize > 0, patchSize > 0, embedDim > 0, depth > 0, numHeads > 0, inChans > 0 else {
            throw fail("image size, patch size, width, depth, heads and channels must all be positive")
        }
        guard imgSize % patchSize == 0 else {
            throw fail("image size \(imgSize) is not divisible by patch size \(patchSize)")
        }
        guard embedDim % numHeads == 0 else {
            throw fail("width \(embedDim) is not divisible by \(numHeads) heads")
        }
        if distilled && decoder != nil {
            throw fail("a DeiT distilled model has no MAE decoder")
        }
        if let d = decoder, d.embedDim % d.numHeads != 0 {
            throw fail("decoder width \(d.embedDim) is not divisible by \(d.numHeads) heads")
        }
    }
}

/// The standard presets (MAE's model factories) plus the small one the embedded default uses.
public enum ModelPreset: String, CaseIterable, Sendable {
    case tiny = "vit_tiny_patch16"
    case small = "vit_small_patch16"
    case base = "vit_base_patch16"
    case large = "vit_large_patch16"
    case huge = "vit_huge_patch14"
    /// The embedded default: 32 px Shapes images in 4 px patches.
    case shapes = "vit_shapes_patch4"

    /// Accepts the preset's name and the usual short forms: "ViT-B/16", "vit-b", "base", "b".
    public init?(name: String) {
        let n = name.lowercased().replacingOccurrences(of: "-", with: "_")
        let aliases: [ModelPreset: [String]] = [
            .tiny: ["vit_ti/16", "vit_ti", "vit_tiny", "tiny", "ti", "vit_tiny_patch16_224"],
            .small: ["vit_s/16", "vit_s", "vit_small", "small", "s", "vit_small_patch16_224"],
            .base: ["vit_b/16", "vit_b", "vit_base", "base", "b", "vit_base_patch16_224"],
            .large: ["vit_l/16", "vit_l", "vit_large", "large", "l", "vit_large_patch16_224"],
            .huge: ["vit_h/14", "vit_h", "vit_huge", "huge", "h", "vit_huge_patch14_224"],
            .shapes: ["shapes", "vit_shapes"],
        ]
        guard let preset = ModelPreset.allCases.first(where: { $0.rawValue == n || aliases[$0]!.contains(n) })
        else { return nil }
        self = preset
    }

    /// The released ViT sizes (MAE's and timm's factories, all but `shapes`): a checkpoint whose metadata
    /// gives no head count takes the heads of the one with its width and depth.
    public static let released: [ModelPreset] = [.tiny, .small, .base, .large, .huge]

    /// The encoder, without decoder or head, at 224 px (32 px for `shapes`).
    public var config: ViTConfig {
        switch self {
        case .tiny: ViTConfig(imgSize: 224, patchSize: 16, embedDim: 192, depth: 12, numHeads: 3)
        case .small: ViTConfig(imgSize: 224, patchSize: 16, embedDim: 384, depth: 12, numHeads: 6)
        case .base: ViTConfig(imgSize: 224, patchSize: 16, embedDim: 768, depth: 12, numHeads: 12)
        case .large: ViTConfig(imgSize: 224, patchSize: 16, embedDim: 1024, depth: 24, numHeads: 16)
        case .huge: ViTConfig(imgSize: 224, patchSize: 14, embedDim: 1280, depth: 32, numHeads: 16)
        case .shapes: ViTConfig(imgSize: 32, patchSize: 4, embedDim: 128, depth: 6, numHeads: 4)
        }
    }

    /// The MAE pretraining decoder that goes with this encoder.
    public var decoder: DecoderConfig {
        self == .shapes ? DecoderConfig(embedDim: 64, depth: 4, numHeads: 4) : .mae
    }
}

/// Errors from building or running models; each reads as one sentence.
public enum ModelError: Error, CustomStringConvertible {
    case invalidConfig(String)
    case shapeMismatch(String)
    case unknownPreset(String)
    /// A forward that would need more memory than the machine has.
    case tooLarge(String)

    public var description: String {
        switch self {
        case .invalidConfig(let s): "Invalid model configuration: \(s)."
        case .shapeMismatch(let s): "Shape mismatch: \(s)."
        case .tooLarge(let s): "Too large: \(s)."
        case .unknownPreset(let s):
            "Unknown model preset '\(s)'; known presets: \(ModelPreset.allCases.map(\.rawValue).joined(separator: ", "))."
        }
    }
}
