import MAEKernels
import MAEModels

/// The ViT as ViTDet adapts it (detectron2 modeling/backbone/vit.py `ViT` with `use_rel_pos`,
/// window blocks and no cls token; `ViTConfig.vitdet`), with the simple feature pyramid on its last
/// block's map. Parameters live in one store under detectron2's names: the ViT's `backbone.net.*`
/// (pos_embed with its cls row, patch_embed, blocks with rel_pos_h / rel_pos_w), the pyramid's
/// `backbone.simfp_*`, so a detector's heads can share the store and a detectron2 ViTDet state dict
/// loads by name. Global blocks default to `ViTDetOptions.evenlySpacedGlobalBlocks` (B: 2, 5, 8,
/// 11; the shipped depth-6 backbone: 1, 3, 5), the window to the pretraining grid (14 for a 224 px
/// ViT/16). Drop path rises per block as torch.linspace(0, dropPath, depth), as detectron2's.
public final class ViTDetBackbone {
    public let vit: VisionTransformer
    public let pyramid: SimpleFeaturePyramid
    public var params: ParameterStore { vit.params }
    public var config: ViTConfig { vit.config }

    /// detectron2's prefix of the ViT's parameters.
    public static let netPrefix = "backbone.net."

    /// Registers the backbone's parameters in `layout` (the ViT's under `backbone.net.`, the
    /// pyramid's under `backbone.`) and returns the pyramid; build the store from the finished layout
    /// (with the heads' parameters) and then `ViTDetBackbone(config:pyramid:store:)`.
    public static func addParameters(_ config: ViTConfig, to layout: inout ParameterLayout, outChannels: Int = 256,
                                     scaleFactors: [Double] = [4, 2, 1, 0.5], topBlock: Bool = true) throws
        -> SimpleFeaturePyramid {
        guard config.vitdet != nil else {
            throw ModelError.invalidConfig("a ViTDet backbone needs the config's ViTDet options (window, global blocks)")
        }
        try config.validate()
        config.addParameters(to: &layout, prefix: netPrefix)
        return SimpleFeaturePyramid("backbone", in: &layout, inChannels: config.embedDim, inStride: config.patchSize,
                                    outChannels: outChannels, scaleFactors: scaleFactors, topBlock: topBlock)
    }

    /// The backbone over `store`, which holds `addParameters`'s parameters.
    public init(config: ViTConfig, pyramid: SimpleFeaturePyramid, store: ParameterStore) throws {
        vit = try VisionTransformer(config: config, store: store, prefix: Self.netPrefix)
        self.pyramid = pyramid
    }

    /// A backbone with a store of its own.
    public convenience init(config: ViTConfig, outChannels: Int = 256, scaleFactors: [Double] = [4, 2, 1, 0.5],
                            topBlock: Bool = true) throws {
        var layout = ParameterLayout()
        let pyramid = try Self.addParameters(config, to: &layout, outChannels: outChannels, scaleFactors: scaleFactors,
                                             topBlock: topBlock)
        try self.init(config: config, pyramid: pyramid, store: ParameterStore(layout: layout))
    }

    /// MAE's initialisation of the ViT (rel-pos tables zero) and torch's of the pyramid.
    public func initializeWeights(seed: UInt64) {
        vit.initializeWeights(seed: seed)
        var rng = RandomStream(seed: seed).derived(1)
        pyramid.initialize(params, rng: &rng)
    }

    /// Copies a pretrained encoder's weights (MAE or supervised: `pos_embed`, `patch_embed.*`,
    /// `blocks.i.*`) into `backbone.net.*`. The rel-pos tables stay as they are (zero after
    /// `initializeWeights`: MAE has none) unless the source has them; cls_token and the final norm
    /// have no place in ViTDet and are left out. Throws naming the first backbone weight the source
    /// lacks or has in another shape.
    public func loadEncoder(from source: VisionTransformer) throws {
        for spec in params.specs where spec.name.hasPrefix(Self.netPrefix) {
            let name = String(spec.name.dropFirst(Self.netPrefix.count))
            let optional = name.hasSuffix("attn.rel_pos_h") || name.hasSuffix("attn.rel_pos_w")
            guard let from = source.params.spec(name) else {
                if optional { continue }
                throw ModelError.shapeMismatch("the pretrained encoder has no \(name) for \(spec.name)")
            }
            try params.set(spec.name, shape: from.shape, Array(source.params.value(name)))
        }
    }

    /// What the backward needs.
    public struct Context {
        public let encoder: EncoderContext
        let pyramid: SimpleFeaturePyramid.Context
        let gridHeight, gridWidth: Int
    }

    /// images (B, 3, H, W), normalised, H and W multiples of the patch -> the pyramid's levels,
    /// finest first (strides `pyramid.strides`), and the context for `backward`.
    public func forward(images: UnsafePointer<Float>, batch: Int, height: Int, width: Int, training: Bool = false,
                        seed: UInt64 = 0) -> (levels: [FeatureMap], context: Context) {
        let c = config, last = c.depth - 1, gh = height / c.patchSize, gw = width / c.patchSize, d = c.embedDim
        let enc = vit.forwardEncoder(images: images, batch: batch, height: height, width: width, blocks: [last],
                                     finalOutput: false, prefixTokens: false, training: training, seed: seed)
        let tokens = enc.blockOutput(last), map = Tensor([batch, d, gh, gw])
        transposeTokens(out: map.data, tokens.data, batch: batch, rows: gh * gw, columns: d)
        let (levels, pyramidContext) = pyramid.forward(map, params, training: training)
        return (levels, Context(encoder: enc, pyramid: pyramidContext, gridHeight: gh, gridWidth: gw))
    }

    /// Accumulates every parameter gradient from one gradient per level (shaped as the levels);
    /// with `inputGradient`, returns the gradient of the images (B, 3, H, W).
    @discardableResult
    public func backward(_ ctx: Context, levelGradients: [Tensor], inputGradient: Bool = false) -> Tensor? {
        let b = ctx.encoder.batch, d = config.embedDim, l = ctx.gridHeight * ctx.gridWidth
        let dMap = Tensor([b, d, ctx.gridHeight, ctx.gridWidth])
        pyramid.backward(ctx.pyramid, levelGradients: levelGradients, dInput: dMap, params)
        let dTokens = Tensor([b, l, d])
        transposeTokens(out: dTokens.data, dMap.data, batch: b, rows: d, columns: l)
        return vit.backwardEncoder(ctx.encoder, blockGradients: [config.depth - 1: dTokens], inputGradient: inputGradient)
    }
}

/// out (B, columns, rows) = per image the transpose of input (B, rows, columns): tokens (B, L, D)
/// to a map (B, D, Gh Gw) and back.
func transposeTokens(out: UnsafeMutablePointer<Float>, _ input: UnsafePointer<Float>, batch: Int, rows: Int, columns: Int) {
    Parallel.forEach(batch * columns) { job in
        let b = job / columns, c = job % columns
        let src = input + b * rows * columns + c, dst = out + (b * columns + c) * rows
        for r in 0..<rows { dst[r] = src[r * columns] }
    }
}
