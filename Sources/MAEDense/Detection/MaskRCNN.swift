import Foundation
import MAEKernels
import MAEModels

/// Everything that fixes a Mask R-CNN's parameters and its training targets.
public struct MaskRCNNConfig: Codable, Equatable, Sendable {
    /// The ViT with its ViTDet options (window, global blocks, the dense input size).
    public var backbone: ViTConfig
    /// The simple feature pyramid's width and scale factors (relative to the patch stride).
    public var pyramidChannels: Int
    public var scaleFactors: [Double]
    /// One anchor size per pyramid level, the top max-pool level included, and the aspect ratios.
    public var anchorSizes: [Double]
    public var aspectRatios: [Double]
    public var heads: ROIHeadConfig
    /// Anchors sampled per image for the RPN's losses; RoIs per image and their foreground fraction.
    public var rpnBatchSize: Int
    public var roiBatchSize: Int
    public var roiPositiveFraction: Double
    /// The backbone's stochastic depth, rising per block to this (detectron2's linspace).
    public var dropPath: Float

    public init(backbone: ViTConfig, pyramidChannels: Int = 256, scaleFactors: [Double] = [4, 2, 1, 0.5],
                anchorSizes: [Double] = [32, 64, 128, 256, 512], aspectRatios: [Double] = [0.5, 1, 2], heads: ROIHeadConfig,
                rpnBatchSize: Int = 256, roiBatchSize: Int = 512, roiPositiveFraction: Double = 0.25, dropPath: Float = 0.1) {
        self.backbone = backbone; self.pyramidChannels = pyramidChannels; self.scaleFactors = scaleFactors
        self.anchorSizes = anchorSizes; self.aspectRatios = aspectRatios; self.heads = heads
        self.rpnBatchSize = rpnBatchSize; self.roiBatchSize = roiBatchSize; self.roiPositiveFraction = roiPositiveFraction
        self.dropPath = dropPath
    }
}

/// Mask R-CNN as ViTDet builds it (detectron2 `GeneralizedRCNN`): the ViTDet backbone with its simple
/// feature pyramid (p2..p6 for a patch-16 ViT), the RPN on every level, the RoI heads on all but the top
/// one; one parameter store in detectron2's names end to end (`backbone.net.*`, `backbone.simfp_*`,
/// `proposal_generator.rpn_head.*`, `roi_heads.*`), so it saves and loads as detectron2's state dict.
public final class MaskRCNN {
    public let config: MaskRCNNConfig
    public let backbone: ViTDetBackbone
    public let rpn: RPN
    public let roiHeads: ROIHeads
    public var params: ParameterStore { backbone.params }
    /// Under data parallelism, the training batch's place in the global batch (nil: the batch is
    /// the whole one): drop path and the anchor and RoI samples draw as one process does for the
    /// whole batch, and the RoI losses are normalised by the global batch's counts.
    public var globalBatch: GlobalBatch?
    /// The padded square input side.
    public var inputSize: Int { config.backbone.vitdet?.inputSize ?? config.backbone.imgSize }

    public init(_ config: MaskRCNNConfig) throws {
        self.config = config
        var layout = ParameterLayout()
        let pyramid = try ViTDetBackbone.addParameters(config.backbone, to: &layout, outChannels: config.pyramidChannels,
                                                       scaleFactors: config.scaleFactors, topBlock: true)
        guard config.anchorSizes.count == pyramid.strides.count else {
            throw ModelError.invalidConfig("\(config.anchorSizes.count) anchor sizes for the \(pyramid.strides.count) pyramid levels")
        }
        guard config.heads.inChannels == config.pyramidChannels else {
            throw ModelError.invalidConfig("the RoI heads read \(config.heads.inChannels) channels but the pyramid has \(config.pyramidChannels)")
        }
        let anchors = AnchorGenerator(sizes: config.anchorSizes.map { [$0] }, aspectRatios: [config.aspectRatios],
                                      strides: pyramid.strides)
        var rpn = RPN(in: &layout, channels: config.pyramidChannels, anchors: anchors)
        rpn.batchSizePerImage = config.rpnBatchSize
        var heads = ROIHeads(config.heads, strides: pyramid.stages.map(\.stride), in: &layout)
        heads.batchSizePerImage = config.roiBatchSize
        heads.positiveFraction = config.roiPositiveFraction
        self.rpn = rpn
        roiHeads = heads
        backbone = try ViTDetBackbone(config: config.backbone, pyramid: pyramid, store: ParameterStore(layout: layout))
        backbone.vit.dropPath = config.dropPath
    }

    /// Initialises every parameter as the reference does (MAE's ViT init with zero rel-pos tables,
    /// torch's pyramid init, the RPN's normal(0.01), the heads' c2 fills), from `seed`.
    public func initializeWeights(seed: UInt64) {
        backbone.initializeWeights(seed: seed)
        var rpnStream = RandomStream(seed: seed).derived(2), headStream = RandomStream(seed: seed).derived(3)
        rpn.initialize(params, rng: &rpnStream)
        roiHeads.initialize(params, rng: &headStream)
    }

    /// detectron2's `get_vit_lr_decay_rate` and ViTDet's weight-decay rules over the store: lr scale
    /// decay^(depth + 1 - layer id) with id 0 for `.pos_embed` / `.patch_embed`, i + 1 for `.blocks.i.`,
    /// depth + 1 (scale 1) for everything else (pyramid, RPN, heads); weight decay on every parameter
    /// but the ViT's nn.LayerNorms (`weight_decay_norm` 0) and pos_embed (its override), so the
    /// pyramid's and heads' channel LNs and all biases keep it.
    public func parameterGroups(layerDecay: Float) -> ParameterGroups {
        let depth = config.backbone.depth
        var groups = ParameterGroups(layout: params.layout, depth: depth)
        groups.lrScale = params.specs.map { Float(pow(Double(layerDecay), Double(depth + 1 - Self.layerID($0.name, depth: depth)))) }
        groups.decay = params.specs.map { spec in
            let name = spec.name
            let vitNorm = name.hasPrefix(ViTDetBackbone.netPrefix + "blocks.") && (name.contains(".norm1.") || name.contains(".norm2."))
            return !vitNorm && !name.hasSuffix("pos_embed")
        }
        return groups
    }

    /// detectron2 vit.py `get_vit_lr_decay_rate`'s layer id of a parameter name.
    public static func layerID(_ name: String, depth: Int) -> Int {
        guard name.hasPrefix("backbone") else { return depth + 1 }
        if name.contains(".pos_embed") || name.contains(".patch_embed") { return 0 }
        if let range = name.range(of: ".blocks."), !name.contains(".residual.") {
            return (Int(name[range.upperBound...].prefix { $0.isNumber }) ?? 0) + 1
        }
        return depth + 1
    }

    /// One training step's forward and backward (gradients accumulate into `params.grads`): images
    /// (B, 3, S, S) normalised and padded, `imageSizes` their extents, `truth` their objects. Returns
    /// detectron2's loss terms (loss_rpn_cls, loss_rpn_loc, loss_cls, loss_box_reg, loss_mask), whose
    /// sum is the total. Drop path and every sample draw from `stream`.
    public func trainStep(images: UnsafePointer<Float>, batch: Int, imageSizes: [ImageSize], truth: [GroundTruth],
                          stream: RandomStream) throws -> [String: Float] {
        let size = inputSize
        backbone.vit.batchShard = globalBatch?.shard
        let (levels, context) = backbone.forward(images: images, batch: batch, height: size, width: size, training: true,
                                                 seed: stream.derived(1).state)
        var rpnStream = stream.derived(2), roiStream = stream.derived(3)
        let rpnOut = try rpn.forward(features: levels, imageSizes: imageSizes, gtBoxes: truth.map(\.boxes), params: params,
                                     training: true, stream: &rpnStream, global: globalBatch)
        let pooled = Array(levels.prefix(roiHeads.boxPooler.strides.count))
        let (roiLosses, roiContext) = roiHeads.forwardTraining(features: pooled, proposals: rpnOut.proposals.map(\.boxes),
                                                               truth: truth, params, stream: &roiStream, global: globalBatch)
        let grads = levels.map { FeatureMap(batch: $0.batch, channels: $0.channels, height: $0.height, width: $0.width, stride: $0.stride) }
        roiHeads.backward(roiContext, dFeatures: Array(grads.prefix(pooled.count)), params)
        rpn.backward(rpnOut.context, params: params, featureGradients: grads)
        backbone.backward(context, levelGradients: grads.map(\.tensor))
        return rpnOut.losses.merging(roiLosses.terms) { a, _ in a }
    }

    /// Inference on images (B, 3, S, S): per image its detections in the input frame, clipped to its extent.
    public func detect(images: UnsafePointer<Float>, batch: Int, imageSizes: [ImageSize]) throws -> [Detections] {
        let size = inputSize
        let (levels, _) = backbone.forward(images: images, batch: batch, height: size, width: size, training: false)
        var unused = RandomStream(seed: 0)
        let out = try rpn.forward(features: levels, imageSizes: imageSizes, gtBoxes: nil, params: params, training: false,
                                  stream: &unused)
        return roiHeads.inference(features: Array(levels.prefix(roiHeads.boxPooler.strides.count)),
                                  proposals: out.proposals.map(\.boxes), imageSizes: imageSizes, params)
    }
}
