import Foundation
import MAEKernels
import MAEModels

/// A segmentation model: the shared ViT as mmseg's backbone and a head, all parameters in one flat
/// store under mmsegmentation's names (`backbone.layers.i.*`, `neck.*`, `decode_head.*`,
/// `auxiliary_head.*`, BN buffers), so the training loop, the optimizer and checkpoints see one
/// table. The backbone's entries come first, in the ViT's own order: its forward and backward run
/// on the ViT's store, which `forwardBackbone` fills from this one when the two differ and whose
/// gradients `backwardBackbone` adds back (at most one copy of the backbone's values each way per step).
public protocol Segmenter: AnyObject {
    var backbone: SegmentationBackbone { get }
    var params: ParameterStore { get }
    var classes: Int { get }
    /// The training batch's rows of a global batch under data parallelism (nil: the whole batch):
    /// per-sample draws (drop path, Dropout2d) are made for the whole batch and these rows kept.
    var batchShard: BatchShard? { get set }
    /// One training step on images (B, 3, H, W) and labels (B, H, W) (255 ignored): forward in
    /// training mode, mmseg's losses, backward into `params.grads`. Returns the loss terms by name
    /// ("loss" is the total).
    func trainStep(images: UnsafePointer<Float>, batch: Int, height: Int, width: Int, labels: [Int32],
                   seed: UInt64) -> [String: Double]
    /// Logits (B, K, H, W) in evaluation mode, bilinearly resized to the input size.
    func logits(images: UnsafePointer<Float>, batch: Int, height: Int, width: Int) -> Tensor
    /// Per-parameter optimisation settings (layer decay, weight decay, what is frozen).
    func groups(layerDecay: Float) -> ParameterGroups
    /// Initialises the heads (the backbone's values are copied in by the caller).
    func initializeHeads(seed: UInt64)
}

extension Segmenter {
    /// The backbone's span of the flat store (its first entries).
    var backboneCount: Int { backbone.vit.params.layout.totalCount }

    /// Copies the backbone's values from the ViT into this store (after loading a checkpoint into the ViT).
    public func copyBackboneFromViT() {
        params.values.data.update(from: backbone.vit.params.values.data, count: backboneCount)
    }

    /// Gives the ViT this store's backbone values when they differ from its own, and only then marks
    /// the ViT's bf16 packs stale: an evaluation packs the backbone once, training once per optimizer
    /// step, a frozen backbone once. The values are compared rather than a version trusted: a pointer
    /// from `ParameterStore.value` may be written long after the call that marked the store changed
    /// (the gradient checks do), and such a write must still reach the ViT. The comparison reads the
    /// span once (ViT-B's 86 M values: about 20 ms here), small next to a forward.
    func syncBackboneToViT() {
        let vit = backbone.vit.params, bytes = backboneCount * MemoryLayout<Float>.stride
        guard memcmp(vit.values.data, params.values.data, bytes) != 0 else { return }
        vit.values.data.update(from: params.values.data, count: backboneCount)
        vit.weightsChanged()
    }

    /// The backbone's maps for images (B, 3, H, W), run on the ViT with this store's backbone values.
    func forwardBackbone(images: UnsafePointer<Float>, batch: Int, height: Int, width: Int, training: Bool,
                         seed: UInt64) -> SegmentationBackbone.Pass {
        syncBackboneToViT()
        return backbone.forward(images: images, batch: batch, height: height, width: width, training: training, seed: seed)
    }

    /// Backpropagates the maps' gradients through the ViT and adds its gradients into this store's.
    func backwardBackbone(_ pass: SegmentationBackbone.Pass, mapGradients: [Tensor]) {
        let vit = backbone.vit
        vit.params.zeroGrads()
        backbone.backward(pass, mapGradients: mapGradients)
        let g = params.grads.data, src = vit.params.grads.data
        for i in 0..<backboneCount { g[i] += src[i] }
    }
}

/// mmseg's LayerDecayOptimizerConstructor for BEiT / MAE backbones (engine/optimizers/
/// layer_decay_optimizer_constructor.py) with num_layers = depth + 2: layer id 0 for
/// backbone.cls_token / mask_token / pos_embed / patch_embed.*, i + 1 for backbone.layers.i.*,
/// depth + 1 for everything else (neck and heads); lr scale decay^(depth + 1 - id). No weight decay
/// for 1-D parameters and `.bias` names; mmseg's name test for pos_embed / cls_token compares the
/// bare names, which never match `backbone.pos_embed`, so those DO get weight decay, as here.
/// Buffers (BN running statistics) are frozen.
public func mmsegLayerDecayGroups(_ layout: ParameterLayout, depth: Int, layerDecay: Float,
                                  frozen: @escaping (String) -> Bool = { _ in false }) -> ParameterGroups {
    var groups = ParameterGroups(layout: layout, depth: depth, frozen: frozen)
    let top = depth + 1
    groups.lrScale = layout.specs.map { spec in
        Float(pow(Double(layerDecay), Double(top - mmsegLayerID(spec.name, depth: depth))))
    }
    return groups
}

/// mmseg's get_layer_id_for_vit.
public func mmsegLayerID(_ name: String, depth: Int) -> Int {
    if ["backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"].contains(name) { return 0 }
    if name.hasPrefix("backbone.patch_embed") { return 0 }
    if name.hasPrefix("backbone.layers.") {
        let index = name.dropFirst("backbone.layers.".count).prefix { $0.isNumber }
        return (Int(index) ?? 0) + 1
    }
    return depth + 1
}

// MARK: - UperNet

/// mmseg's MAE UperNet (configs/_base_/models/upernet_mae.py): backbone -> Feature2Pyramid ->
/// UPerHead, plus the FCN auxiliary head on level 2 (loss weight 0.4). Losses are mmseg's
/// cross-entropy (ignore 255) on logits bilinearly resized to the label size.
public final class UperNetSegmenter: Segmenter {
    public let backbone: SegmentationBackbone
    public let params: ParameterStore
    public let classes: Int
    public let neck: Feature2Pyramid
    public let decode: UPerHead
    public let auxiliary: FCNHead?
    public var auxiliaryWeight: Float = 0.4
    public var batchShard: BatchShard?

    /// `channels`: UPerHead's width (mmseg 768 for ViT-B); `auxChannels`: the FCN head's (mmseg 256),
    /// nil for no auxiliary head; `rescales`: the neck's (`Feature2Pyramid.supportedRescales`).
    public init(backbone: SegmentationBackbone, classes: Int, channels: Int, auxChannels: Int?,
                rescales: [Double] = Feature2Pyramid.defaultRescales) {
        precondition(backbone.outIndices.count == 4, "UperNet reads 4 backbone blocks, not \(backbone.outIndices)")
        let d = backbone.vit.config.embedDim
        var layout = ParameterLayout()
        backbone.addParameters(to: &layout)
        neck = Feature2Pyramid(in: &layout, width: d, rescales: rescales)
        decode = UPerHead(in: &layout, inChannels: d, channels: channels, classes: classes)
        auxiliary = auxChannels.map { FCNHead(in: &layout, inChannels: d, channels: $0, classes: classes) }
        self.backbone = backbone
        self.classes = classes
        params = ParameterStore(layout: layout)
        copyBackboneFromViT()
    }

    public func initializeHeads(seed: UInt64) {
        var rng = RandomStream(seed: seed)
        neck.initialize(params, rng: &rng)
        decode.initialize(params, rng: &rng)
        auxiliary?.initialize(params, rng: &rng)
    }

    public func groups(layerDecay: Float) -> ParameterGroups {
        mmsegLayerDecayGroups(params.layout, depth: backbone.vit.config.depth, layerDecay: layerDecay)
    }

    public func trainStep(images: UnsafePointer<Float>, batch b: Int, height h: Int, width w: Int, labels: [Int32],
                          seed: UInt64) -> [String: Double] {
        var rng = RandomStream(seed: seed).derived(1)
        backbone.vit.batchShard = batchShard
        let bb = forwardBackbone(images: images, batch: b, height: h, width: w, training: true, seed: RandomStream(seed: seed).derived(2).state)
        let pyramid = neck.forward(bb.maps, params, training: true)
        let levels = pyramid.levels.map(\.tensor)
        let head = decode.forward(levels, params, training: true, rng: &rng, shard: batchShard)
        let (decodeLoss, dDecode) = lossAtLabelSize(head.logits, labels: labels, height: h, width: w, weight: 1)
        let dLevels: [Tensor?] = decode.backward(head, dLogits: dDecode, params)
        var terms = ["decode": Double(decodeLoss)]
        var total = decodeLoss
        if let auxiliary {
            let aux = auxiliary.forward(levels[2], params, training: true, rng: &rng, shard: batchShard)
            let (auxLoss, dAux) = lossAtLabelSize(aux.logits, labels: labels, height: h, width: w, weight: auxiliaryWeight)
            addInPlace(dLevels[2]!, auxiliary.backward(aux, dLogits: dAux, params))
            terms["aux"] = Double(auxLoss)
            total += auxLoss
        }
        backwardBackbone(bb, mapGradients: neck.backward(pyramid, levelGradients: dLevels, params))
        terms["loss"] = Double(total)
        return terms
    }

    public func logits(images: UnsafePointer<Float>, batch b: Int, height h: Int, width w: Int) -> Tensor {
        let bb = forwardBackbone(images: images, batch: b, height: h, width: w, training: false, seed: 0)
        let pyramid = neck.forward(bb.maps, params, training: false)
        var rng = RandomStream(seed: 0)
        let head = decode.forward(pyramid.levels.map(\.tensor), params, training: false, rng: &rng)
        return resizeBilinear(head.logits, height: h, width: w)
    }
}

/// mmseg's decode-head loss: logits (B, K, h, w) resized bilinearly (align_corners false) to the
/// labels' (H, W), cross-entropy there; returns the loss and the gradient of the unresized logits.
func lossAtLabelSize(_ logits: Tensor, labels: [Int32], height h: Int, width w: Int, weight: Float) -> (Float, Tensor) {
    let resized = resizeBilinear(logits, height: h, width: w)
    let (loss, dResized) = pixelCrossEntropy(resized, labels: labels, weight: weight)
    let d = Tensor(logits.shape)
    resizeBilinearBackward(dResized, into: d)
    return (loss, d)
}

// MARK: - Linear probe head

/// DINOv2's linear segmentation probe on a frozen backbone (eval/segmentation BNHead): the last
/// `blocks` block outputs, each through the backbone's final norm (get_intermediate_layers with
/// norm=True), cls dropped, as (B, D, H/P, W/P) maps concatenated (the "+ms" feature for 4 blocks),
/// then BatchNorm (`decode_head.bn`) and a 1x1 `decode_head.conv_seg` (std 0.01), logits
/// bilinearly resized to the label size. The backbone runs in eval mode (no drop path) and is frozen.
public final class LinearSegmenter: Segmenter {
    public let backbone: SegmentationBackbone
    public let params: ParameterStore
    public let classes: Int
    let norm: BatchNorm2d
    let conv: Conv2dLayer
    let normNames: (weight: String, bias: String)
    /// Kept for the protocol: this head's training draws nothing per sample (frozen backbone in eval mode, no dropout).
    public var batchShard: BatchShard?

    /// `backbone.outIndices` are the blocks used (the last one for "linear", the last four for "+ms").
    public init(backbone: SegmentationBackbone, classes: Int) throws {
        let vit = backbone.vit, d = vit.config.embedDim, k = backbone.outIndices.count
        guard let normName = ["norm", "fc_norm"].first(where: { vit.params.spec($0 + ".weight") != nil }) else {
            throw ModelError.invalidConfig("the backbone has no final norm for the linear segmentation head")
        }
        normNames = (normName + ".weight", normName + ".bias")
        var layout = ParameterLayout()
        backbone.addParameters(to: &layout)
        norm = BatchNorm2d("decode_head.bn", in: &layout, channels: k * d)
        conv = Conv2dLayer("decode_head.conv_seg", in: &layout, inChannels: k * d, outChannels: classes, kernel: 1,
                           weightInit: .normal(std: 0.01))
        self.backbone = backbone
        self.classes = classes
        params = ParameterStore(layout: layout)
        copyBackboneFromViT()
    }

    public func initializeHeads(seed: UInt64) {
        var rng = RandomStream(seed: seed)
        norm.initialize(params, rng: &rng)
        conv.initialize(params, rng: &rng)
    }

    public func groups(layerDecay: Float) -> ParameterGroups {
        ParameterGroups(layout: params.layout, depth: backbone.vit.config.depth) { $0.hasPrefix("backbone.") }
    }

    /// The frozen features (B, k D, H/P, W/P).
    func features(images: UnsafePointer<Float>, batch b: Int, height h: Int, width w: Int) -> Tensor {
        let pass = forwardBackbone(images: images, batch: b, height: h, width: w, training: false, seed: 0)
        let vit = backbone.vit, d = vit.config.embedDim, p = vit.config.patchSize
        let weight = vit.params.read(normNames.weight), bias = vit.params.read(normNames.bias)
        let maps = backbone.outIndices.map { i -> Tensor in
            let tokens = pass.encoder.blockOutput(i)
            let rows = tokens.count / d
            let normed = Tensor(tokens.shape), mean = Tensor([rows]), rstd = Tensor([rows])
            layerNormForward(out: normed.data, mean: mean.data, rstd: rstd.data, input: tokens.data, weight: weight, bias: bias,
                             rows: rows, width: d)
            return tokensToMap(normed, batch: b, prefix: pass.encoder.prefixTokens, height: h / p, width: w / p)
        }
        return maps.count == 1 ? maps[0] : concatChannels(maps)
    }

    public func trainStep(images: UnsafePointer<Float>, batch b: Int, height h: Int, width w: Int, labels: [Int32],
                          seed: UInt64) -> [String: Double] {
        let x = features(images: images, batch: b, height: h, width: w)
        let n = norm.forward(x, params, training: true)
        let c = conv.forward(n.output, params, training: true)
        let (loss, dLogits) = lossAtLabelSize(c.output, labels: labels, height: h, width: w, weight: 1)
        let dNormed = Tensor(n.output.shape)
        conv.backward(c, dOut: dLogits, dInput: dNormed, params)
        norm.backward(n, dOut: dNormed, dInput: nil, params)
        return ["loss": Double(loss)]
    }

    public func logits(images: UnsafePointer<Float>, batch b: Int, height h: Int, width w: Int) -> Tensor {
        let x = features(images: images, batch: b, height: h, width: w)
        return resizeBilinear(conv(norm(x, params), params), height: h, width: w)
    }
}
