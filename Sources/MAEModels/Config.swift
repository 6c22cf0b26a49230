import MAEFormats
import MAEKernels

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

/// ViTDet's adaptation of the encoder for dense tasks (detectron2 modeling/backbone/vit.py `ViT`):
/// no cls token and no final norm among the parameters (pos_embed keeps its cls row, dropped in use:
/// `pretrain_use_cls_token`), window attention in every block but `globalBlocks`, and optionally the
/// decomposed relative position tables `blocks.i.attn.rel_pos_h` / `rel_pos_w` (2 S - 1, head width)
/// per block, S the window side (window blocks) or the input grid side (global blocks).
public struct ViTDetOptions: Codable, Equatable, Sendable {
    /// Window side in tokens (detectron2 `window_size`: 14, the pretraining grid of ViT-B/16 at 224).
    public var windowSize: Int
    /// Blocks with global attention; the others attend within windows (ViT-B: 2, 5, 8, 11).
    public var globalBlocks: [Int]
    /// `use_rel_pos`.
    public var relativePosition: Bool
    /// The dense input side in pixels (detectron2 `img_size`, 1024) the global blocks' tables are sized for;
    /// another input size resizes the tables linearly in the forward, as detectron2's get_rel_pos.
    public var inputSize: Int

    public init(windowSize: Int, globalBlocks: [Int], relativePosition: Bool = true, inputSize: Int) {
        self.windowSize = windowSize; self.globalBlocks = globalBlocks
        self.relativePosition = relativePosition; self.inputSize = inputSize
    }

    /// ViTDet's spacing of the global blocks: the last block of each group of max(2, depth / 4)
    /// blocks, and always the last block. B (12): 2, 5, 8, 11; L (24): 5, 11, 17, 23; H (32): 7, 15,
    /// 23, 31, as detectron2's configs; depth 6 (the shipped Shapes backbone): 1, 3, 5.
    public static func evenlySpacedGlobalBlocks(depth: Int) -> [Int] {
        let group = max(2, depth / 4)
        return (0..<depth).filter { ($0 + 1) % group == 0 || $0 == depth - 1 }
    }

    /// ViTDet's settings for an encoder at `inputSize` px: the window is the encoder's pretraining grid
    /// (14 for a 224 px ViT/16), evenly spaced global blocks, rel-pos on.
    public init(for config: ViTConfig, inputSize: Int) {
        self.init(windowSize: config.gridSize, globalBlocks: Self.evenlySpacedGlobalBlocks(depth: config.depth),
                  inputSize: inputSize)
    }

    /// Block i's attention window in tokens, 0 for global attention.
    public func window(block i: Int) -> Int { globalBlocks.contains(i) ? 0 : windowSize }

    /// The options a detectron2 ViTDet state dict implies from its rel-pos table lengths
    /// (`blocks.i.attn.rel_pos_h` rows, one entry per block): window blocks carry the shortest
    /// tables (2 w - 1 rows), global blocks the longest (2 G - 1 for the input grid G, so the input
    /// is G patches). Every table of one length reads as all blocks global. Nil when some block has
    /// no table (the windows cannot be told apart then) or a length is even.
    public static func inferred(relPosLengths: [Int?], patchSize: Int) -> ViTDetOptions? {
        let lengths = relPosLengths.compactMap { $0 }
        guard !lengths.isEmpty, lengths.count == relPosLengths.count, lengths.allSatisfy({ $0 % 2 == 1 }),
              let shortest = lengths.min(), let longest = lengths.max() else { return nil }
        let global = lengths.indices.filter { lengths[$0] == longest }
        return ViTDetOptions(windowSize: (shortest + 1) / 2, globalBlocks: global, relativePosition: true,
                             inputSize: (longest + 1) / 2 * patchSize)
    }
}

/// BEiT's per-block extras as mmseg's MAE backbone has them (mmseg backbones/beit.py, mae.py):
/// layer scale, x + gamma_1 * attn(norm1 x) and x + gamma_2 * mlp(norm2 x) with learnable
/// `blocks.i.gamma_1` / `gamma_2` (D); and the relative position bias, an additive score bias
/// (H, N, N) gathered from `blocks.i.attn.relative_position_bias_table` ((2 W - 1)^2 + 3, H) by
/// BEiT's fixed index over a W x W patch window plus the cls token (`RelPosBiasSize`). The bias
/// needs the cls token and exactly that grid in every forward.
public struct BEiTOptions: Codable, Equatable, Sendable {
    /// Layer scale's initial value (mmseg's `init_values`: 1.0 in its MAE configs); nil: no gammas.
    public var layerScale: Float?
    /// The relative position bias's window side in patches (mmseg: img_size / patch_size); nil: no bias.
    public var relativePositionWindow: Int?

    public init(layerScale: Float? = nil, relativePositionWindow: Int? = nil) {
        self.layerScale = layerScale; self.relativePositionWindow = relativePositionWindow
    }

    /// The bias's sizes for `heads` heads, nil without the bias.
    public func relPosBiasSize(heads: Int) -> RelPosBiasSize? {
        relativePositionWindow.map { RelPosBiasSize(windowHeight: $0, windowWidth: $0, heads: heads) }
    }
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
    /// ViTDet's dense adaptation (window attention, rel-pos, no cls token or final norm); nil for MAE's ViT.
    public var vitdet: ViTDetOptions?
    /// BEiT's layer scale and relative position bias (mmseg's MAE backbone); nil for MAE's ViT.
    public var beit: BEiTOptions?

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
        case normPixLoss, distilled, vitdet, beit
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
        vitdet = try c.decodeIfPresent(ViTDetOptions.self, forKey: .vitdet)
        beit = try c.decodeIfPresent(BEiTOptions.self, forKey: .beit)
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
    /// With `vitdet`: detectron2's ViT parameters instead (pos_embed, patch_embed, the blocks with
    /// their rel-pos tables; no cls token, no norm).
    public func parameterLayout() -> ParameterLayout {
        var layout = ParameterLayout()
        addParameters(to: &layout)
        return layout
    }

    /// Appends the model's parameters (see `parameterLayout`) to `layout`, each name behind `prefix`
    /// (detectron2's "backbone.net." for a ViTDet backbone inside a detector's one store).
    public func addParameters(to layout: inout ParameterLayout, prefix: String = "") {
        let d = embedDim, l = numPatches, pretraining = decoder != nil
        if let vitdet {
            layout.add(prefix + "pos_embed", [1, numPrefixTokens + l, d])
            layout.add(prefix + "patch_embed.proj.weight", [d, inChans, patchSize, patchSize])
            layout.add(prefix + "patch_embed.proj.bias", [d])
            layout.addBlocks(prefix: prefix + "blocks", depth: depth, width: d, hidden: mlpHidden, heads: numHeads,
                             relPosLengths: (0..<depth).map { relPosLength(block: $0, vitdet) })
            return
        }
        layout.add(prefix + "cls_token", [1, 1, d])
        if distilled { layout.add(prefix + "dist_token", [1, 1, d]) }
        // MAE pretraining keeps the sin-cos table fixed; fine-tuning learns it (timm / models_vit).
        layout.add(prefix + "pos_embed", [1, numPrefixTokens + l, d], trainable: !pretraining)
        layout.add(prefix + "patch_embed.proj.weight", [d, inChans, patchSize, patchSize])
        layout.add(prefix + "patch_embed.proj.bias", [d])
        layout.addBlocks(prefix: prefix + "blocks", depth: depth, width: d, hidden: mlpHidden, heads: numHeads,
                         layerScale: beit?.layerScale != nil,
                         relPosBiasRows: beit?.relPosBiasSize(heads: numHeads)?.tableRows)
        let norm = prefix + (pooling == .cls || pretraining ? "norm" : "fc_norm")
        layout.add("\(norm).weight", [d])
        layout.add("\(norm).bias", [d])
        if let dc = decoder {
            let dd = dc.embedDim
            layout.add(prefix + "decoder_embed.weight", [dd, d])
            layout.add(prefix + "decoder_embed.bias", [dd])
            layout.add(prefix + "mask_token", [1, 1, dd])
            layout.add(prefix + "decoder_pos_embed", [1, 1 + l, dd], trainable: false)
            layout.addBlocks(prefix: prefix + "decoder_blocks", depth: dc.depth, width: dd, hidden: dc.mlpHidden)
            layout.add(prefix + "decoder_norm.weight", [dd])
            layout.add(prefix + "decoder_norm.bias", [dd])
            layout.add(prefix + "decoder_pred.weight", [patchDim, dd])
            layout.add(prefix + "decoder_pred.bias", [patchDim])
        }
        if numClasses > 0 {
            layout.add(prefix + "head.weight", [numClasses, d])
            layout.add(prefix + "head.bias", [numClasses])
        }
    }

    /// Rows of block i's rel-pos tables (2 S - 1), nil without rel-pos: S is the window, or the
    /// grid side of the dense input for a global block.
    func relPosLength(block i: Int, _ v: ViTDetOptions) -> Int? {
        guard v.relativePosition else { return nil }
        let side = v.window(block: i) > 0 ? v.windowSize : v.inputSize / patchSize
        return 2 * side - 1
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
        if let b = beit {
            guard vitdet == nil, decoder == nil, !distilled else {
                throw fail("BEiT's layer scale and relative position bias go on a plain ViT encoder (no ViTDet options, decoder or distillation token)")
            }
            if let w = b.relativePositionWindow, w <= 0 { throw fail("the relative position bias window \(w) must be positive") }
        }
        if let v = vitdet {
            guard decoder == nil, numClasses == 0, !distilled else {
                throw fail("a ViTDet backbone has no decoder, classifier head or distillation token")
            }
            guard v.windowSize > 0, v.inputSize > 0, v.inputSize % patchSize == 0 else {
                throw fail("ViTDet window \(v.windowSize) and input size \(v.inputSize) must be positive, the input whole \(patchSize)-pixel patches")
            }
            guard v.globalBlocks.allSatisfy({ (0..<depth).contains($0) }) else {
                throw fail("ViTDet global blocks \(v.globalBlocks) are not all blocks of a \(depth)-block encoder")
            }
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
