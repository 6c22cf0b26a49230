import Foundation
import MAEFormats
import MAEJSON

/// Where a head count came from.
public enum HeadsSource: String, Sendable {
    case metadata = "the checkpoint's metadata"
    case preset = "the standard preset of this width and depth"
    case unknown = "nowhere: pass --heads"
}

/// The MAE decoder's shape, when a checkpoint has one.
public struct InferredDecoder: Sendable, Equatable {
    public var embedDim: Int
    public var depth: Int
    public var mlpHidden: Int
    /// Output features per patch as decoder_pred.weight has them (the model's are P * P * C).
    public var predDim: Int
    public var numHeads: Int?
}

/// A ViT's architecture as read from tensor shapes (and, for the head count, metadata or a preset).
public struct InferredArchitecture: Sendable, Equatable {
    public var embedDim: Int
    public var depth: Int
    public var patchSize: Int
    public var inChans: Int
    /// Patches per side of the pos_embed grid, nil when pos_embed is absent or not square.
    public var gridSize: Int?
    public var mlpHidden: Int
    /// Classifier outputs, 0 without a head.
    public var numClasses: Int
    public var pooling: Pooling
    /// DeiT distilled: a `dist_token` beside the cls token, both in the sequence (pos_embed rows 0 and 1).
    public var distilled: Bool
    /// Tokens before the patches in pos_embed (cls, plus DeiT's dist token).
    public var numPrefixTokens: Int { distilled ? 2 : 1 }
    public var decoder: InferredDecoder?
    /// nil when neither metadata nor a preset gives it: the user must pass --heads.
    public var numHeads: Int?
    public var headsSource: HeadsSource

    /// One line, e.g. "ViT width 768, depth 12, 12 heads, patch 16, grid 14x14, MLP 3072".
    public var summary: String {
        var s = "ViT width \(embedDim), depth \(depth), \(numHeads.map { "\($0) heads" } ?? "heads unknown"), " +
            "patch \(patchSize), \(inChans) channels, " + (gridSize.map { "grid \($0)x\($0)" } ?? "no pos_embed grid") +
            ", MLP \(mlpHidden), \(pooling == .avg ? "global average pool + fc_norm" : "cls token + norm")" +
            (distilled ? ", DeiT distilled (cls + dist tokens)" : "") +
            (numClasses > 0 ? ", head of \(numClasses) classes" : ", no head")
        if let d = decoder {
            s += "; decoder width \(d.embedDim), depth \(d.depth), \(d.numHeads.map { "\($0) heads" } ?? "heads unknown"), " +
                "MLP \(d.mlpHidden), \(d.predDim) outputs per patch"
        }
        return s
    }
}

/// Infers the architecture from canonical weights (see `canonicalize`). `metadata` is a safetensors
/// `__metadata__`: its `config` JSON (as mae-eval writes it, or flat reference keys) supplies head
/// counts and, when it has them, the depths and pooling the model is built with.
public func inferArchitecture(_ w: [String: StoredTensor], metadata: [String: String] = [:],
                              source: String = "checkpoint") throws -> InferredArchitecture {
    try inferArchitecture(shapes: w.mapValues(\.shape), metadata: metadata, source: source)
}

/// `inferArchitecture` over names and shapes only (for key lists of models too large to hold in a test).
/// Depth is the highest block index + 1 (or the metadata's): a gap is a missing block, not the end.
public func inferArchitecture(shapes w: [String: [Int]], metadata: [String: String] = [:],
                              source: String = "checkpoint") throws -> InferredArchitecture {
    func fail(_ reason: String) -> PathError { PathError(source, reason) }
    guard let patch = w["patch_embed.proj.weight"] else {
        throw fail("has no patch_embed.proj.weight, so it is not a ViT checkpoint mae-eval recognises")
    }
    guard patch.count == 4, patch[2] == patch[3], patch[2] > 0 else {
        throw fail("patch_embed.proj.weight has shape \(patch), not [D, C, P, P]")
    }
    let config = metadata["config"].flatMap { try? JSONValue.parse($0, maxDepth: 64) }
    let decoderConfig = config?["decoder"]
    let dim = patch[0]
    let blocks = blockIndices(w, "blocks.")
    guard let lowest = blocks.min() else { throw fail("has no transformer blocks (blocks.N.*)") }
    let depth = config.flatMap { firstInt($0, ["depth"]) } ?? (blocks.max()! + 1)
    guard let fc1 = w["blocks.\(lowest).mlp.fc1.weight"], fc1.count == 2 else {
        throw fail("has no blocks.\(lowest).mlp.fc1.weight of shape [hidden, D]")
    }
    // DeiT distilled: its dist token, its distillation head, or a pos_embed with two prefix rows
    // (so a deleted dist_token is reported missing, not taken for a plain ViT).
    let rows = w["pos_embed"].flatMap { $0.count == 3 ? $0[1] : nil }
    let distilled = w["dist_token"] != nil || w["head_dist.weight"] != nil ||
        rows.map { squareSide($0 - 1) == nil && squareSide($0 - 2) != nil } == true
    let prefix = distilled ? 2 : 1
    var grid: Int?
    if let pos = w["pos_embed"] {
        guard pos.count == 3, pos[0] == 1, let side = squareSide(pos[1] - prefix) else {
            throw fail("pos_embed has shape \(pos), not [1, \(prefix) + G*G, D] for a square grid of G*G patches")
        }
        grid = side
    } else if let size = config.flatMap({ firstInt($0, ["imgSize", "img_size", "img"]) }), size % patch[2] == 0 {
        grid = size / patch[2]
    }
    var decoder: InferredDecoder?
    if let embed = w["decoder_embed.weight"], embed.count == 2 {
        let dblocks = blockIndices(w, "decoder_blocks.")
        let ddepth = decoderConfig.flatMap { firstInt($0, ["depth"]) } ?? config.flatMap { firstInt($0, ["ddepth", "decoder_depth"]) }
            ?? ((dblocks.max() ?? -1) + 1)
        let dfc1 = dblocks.min().flatMap { w["decoder_blocks.\($0).mlp.fc1.weight"]?.first }
        decoder = InferredDecoder(embedDim: embed[0], depth: ddepth, mlpHidden: dfc1 ?? 4 * embed[0],
                                  predDim: w["decoder_pred.weight"]?.first ?? patch[1] * patch[2] * patch[2],
                                  numHeads: nil)
    }
    // An MAE pretraining model (with a decoder) pools the cls token after `norm`.
    let pooling = decoder != nil ? .cls : config?["pooling"]?.stringValue.flatMap(Pooling.init(rawValue:))
        ?? (w["fc_norm.weight"] != nil ? .avg : .cls)
    var arch = InferredArchitecture(
        embedDim: dim, depth: depth, patchSize: patch[2], inChans: patch[1], gridSize: grid,
        mlpHidden: fc1[0], numClasses: w["head.weight"]?.first ?? 0, pooling: pooling, distilled: distilled,
        decoder: decoder, numHeads: nil, headsSource: .unknown)

    if let heads = config.flatMap({ firstInt($0, ["heads", "num_heads", "numHeads"]) }) {
        arch.numHeads = heads
        arch.headsSource = .metadata
        // Flat keys (the reference fixtures) or mae-eval's nested ViTConfig ({"decoder": {"numHeads": ...}}).
        arch.decoder?.numHeads = config.flatMap {
            firstInt($0, ["dheads", "decoder_num_heads", "decoderHeads", "decoder_heads"])
                ?? $0["decoder"].flatMap { firstInt($0, ["numHeads", "num_heads", "heads"]) }
        }
    } else if let preset = ModelPreset.released.first(where: { $0.config.embedDim == dim && $0.config.depth == depth }) {
        arch.numHeads = preset.config.numHeads
        arch.headsSource = .preset
    }
    if let d = arch.decoder, d.numHeads == nil {
        arch.decoder?.numHeads = ModelPreset.released.map(\.decoder).first { $0.embedDim == d.embedDim }?.numHeads
    }
    return arch
}

/// The indices N of the `prefixN.` blocks present.
private func blockIndices(_ w: [String: [Int]], _ prefix: String) -> Set<Int> {
    Set(w.keys.compactMap { key -> Int? in
        guard key.hasPrefix(prefix) else { return nil }
        return Int(key.dropFirst(prefix.count).prefix { $0 != "." })
    })
}

private func squareSide(_ n: Int) -> Int? {
    guard n > 0 else { return nil }
    let s = Int(Double(n).squareRoot().rounded())
    return s * s == n ? s : nil
}

private func firstInt(_ json: JSONValue, _ keys: [String]) -> Int? {
    for k in keys { if let v = json[k]?.intValue { return v } }
    return nil
}

extension InferredArchitecture {
    /// The model these weights describe, with `heads` encoder heads, at the pos_embed grid's image
    /// size (0 without a grid); the decoder keeps its inferred head count, else MAE's.
    public func config(heads: Int) -> ViTConfig {
        ViTConfig(imgSize: (gridSize ?? 0) * patchSize, patchSize: patchSize, inChans: inChans, embedDim: embedDim,
                  depth: depth, numHeads: heads, mlpHidden: mlpHidden, numClasses: numClasses, pooling: pooling,
                  decoder: decoder.map {
                      DecoderConfig(embedDim: $0.embedDim, depth: $0.depth, numHeads: $0.numHeads ?? DecoderConfig.mae.numHeads,
                                    mlpHidden: $0.mlpHidden)
                  },
                  distilled: distilled)
    }

    /// The parameters a model of this architecture has (decoder and head included when the weights
    /// have them), as `ViTConfig.parameterLayout()` lists them; no head count shapes one.
    public var parameterLayout: ParameterLayout { config(heads: numHeads ?? 1).parameterLayout() }
}
