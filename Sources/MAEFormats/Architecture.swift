import Foundation
import MAEJSON

/// How the classifier pools tokens.
public enum Pooling: String, Codable, CaseIterable, Sendable {
    /// The cls token after the final `norm` (MAE's linear probe, timm's default).
    case cls
    /// The mean of the patch tokens, then `fc_norm` (MAE fine-tuning with global_pool).
    case avg
}

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
    /// Output features per patch (P * P * C).
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
    public var hasClsToken: Bool
    /// Tokens before the patches in pos_embed (cls, plus DeiT's dist token).
    public var numPrefixTokens: Int
    public var decoder: InferredDecoder?
    /// nil when neither metadata nor a preset gives it: the user must pass --heads.
    public var numHeads: Int?
    public var headsSource: HeadsSource

    /// One line, e.g. "ViT width 768, depth 12, 12 heads, patch 16, grid 14x14, MLP 3072".
    public var summary: String {
        var s = "ViT width \(embedDim), depth \(depth), \(numHeads.map { "\($0) heads" } ?? "heads unknown"), " +
            "patch \(patchSize), \(inChans) channels, " + (gridSize.map { "grid \($0)x\($0)" } ?? "no pos_embed grid") +
            ", MLP \(mlpHidden), \(pooling == .avg ? "global average pool + fc_norm" : "cls token + norm")" +
            (numClasses > 0 ? ", head of \(numClasses) classes" : ", no head")
        if let d = decoder {
            s += "; decoder width \(d.embedDim), depth \(d.depth), \(d.numHeads.map { "\($0) heads" } ?? "heads unknown"), " +
                "MLP \(d.mlpHidden), \(d.predDim) outputs per patch"
        }
        return s
    }
}

/// Standard ViT presets (width, depth) -> heads: ViT-Ti/S/B/L/H.
public let vitHeadPresets: [(width: Int, depth: Int, heads: Int, name: String)] = [
    (192, 12, 3, "ViT-Ti"), (384, 12, 6, "ViT-S"), (768, 12, 12, "ViT-B"), (1024, 24, 16, "ViT-L"), (1280, 32, 16, "ViT-H"),
]

/// MAE's decoder (512 wide, 16 heads) for every released model.
public let maeDecoderHeadPresets: [(width: Int, heads: Int)] = [(512, 16)]

/// Infers the architecture from canonical weights (see `canonicalize`). `metadata` is a safetensors
/// `__metadata__`: its `config` JSON (as mae-eval writes it) supplies head counts.
public func inferArchitecture(_ w: [String: StoredTensor], metadata: [String: String] = [:],
                              source: String = "checkpoint") throws -> InferredArchitecture {
    try inferArchitecture(shapes: w.mapValues(\.shape), metadata: metadata, source: source)
}

/// `inferArchitecture` over names and shapes only (for key lists of models too large to hold in a test).
public func inferArchitecture(shapes w: [String: [Int]], metadata: [String: String] = [:],
                              source: String = "checkpoint") throws -> InferredArchitecture {
    func fail(_ reason: String) -> FormatError { FormatError(source, reason) }
    guard let patch = w["patch_embed.proj.weight"] else {
        throw fail("has no patch_embed.proj.weight, so it is not a ViT checkpoint mae-eval recognises")
    }
    guard patch.count == 4, patch[2] == patch[3], patch[2] > 0 else {
        throw fail("patch_embed.proj.weight has shape \(patch), not [D, C, P, P]")
    }
    let dim = patch[0]
    let depth = blockCount(w, "blocks.")
    guard depth > 0 else { throw fail("has no transformer blocks (blocks.0.*)") }
    guard let fc1 = w["blocks.0.mlp.fc1.weight"], fc1.count == 2 else {
        throw fail("has no blocks.0.mlp.fc1.weight of shape [hidden, D]")
    }
    let hasCls = w["cls_token"] != nil
    let prefix = (hasCls ? 1 : 0) + (w["dist_token"] != nil ? 1 : 0)
    var grid: Int?
    if let pos = w["pos_embed"], pos.count == 3 {
        grid = squareSide(pos[1] - prefix)
    }
    var decoder: InferredDecoder?
    if let embed = w["decoder_embed.weight"], embed.count == 2 {
        let ddepth = blockCount(w, "decoder_blocks.")
        decoder = InferredDecoder(embedDim: embed[0], depth: ddepth,
                                  mlpHidden: w["decoder_blocks.0.mlp.fc1.weight"]?.first ?? 0,
                                  predDim: w["decoder_pred.weight"]?.first ?? 0, numHeads: nil)
    }
    var arch = InferredArchitecture(
        embedDim: dim, depth: depth, patchSize: patch[2], inChans: patch[1], gridSize: grid,
        mlpHidden: fc1[0], numClasses: w["head.weight"]?.first ?? 0,
        pooling: w["fc_norm.weight"] != nil ? .avg : .cls, hasClsToken: hasCls, numPrefixTokens: prefix,
        decoder: decoder, numHeads: nil, headsSource: .unknown)

    let config = metadata["config"].flatMap { try? JSONValue.parse($0, maxDepth: 64) }
    if let heads = config.flatMap({ firstInt($0, ["heads", "num_heads", "numHeads"]) }) {
        arch.numHeads = heads
        arch.headsSource = .metadata
        // Flat keys (the reference fixtures) or mae-eval's nested ViTConfig ({"decoder": {"numHeads": ...}}).
        arch.decoder?.numHeads = config.flatMap {
            firstInt($0, ["dheads", "decoder_num_heads", "decoderHeads", "decoder_heads"])
                ?? $0["decoder"].flatMap { firstInt($0, ["numHeads", "num_heads", "heads"]) }
        }
    } else if let preset = vitHeadPresets.first(where: { $0.width == dim && $0.depth == depth }) {
        arch.numHeads = preset.heads
        arch.headsSource = .preset
    }
    if let d = arch.decoder, d.numHeads == nil {
        arch.decoder?.numHeads = maeDecoderHeadPresets.first { $0.width == d.embedDim }?.heads
    }
    return arch
}

/// Number of consecutive blocks `prefix0.`, `prefix1.`, ... present.
private func blockCount(_ w: [String: [Int]], _ prefix: String) -> Int {
    let indices = Set(w.keys.compactMap { key -> Int? in
        guard key.hasPrefix(prefix) else { return nil }
        return Int(key.dropFirst(prefix.count).prefix { $0 != "." })
    })
    var n = 0
    while indices.contains(n) { n += 1 }
    return n
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

/// The canonical parameter names and shapes of `arch` (decoder included when it has one), in MAE's order.
public func canonicalParameterShapes(_ arch: InferredArchitecture) -> [(name: String, shape: [Int])] {
    let d = arch.embedDim, p = arch.patchSize
    var out: [(String, [Int])] = []
    func block(_ prefix: String, _ d: Int, _ hidden: Int) {
        out += [("\(prefix)norm1.weight", [d]), ("\(prefix)norm1.bias", [d]),
                ("\(prefix)attn.qkv.weight", [3 * d, d]), ("\(prefix)attn.qkv.bias", [3 * d]),
                ("\(prefix)attn.proj.weight", [d, d]), ("\(prefix)attn.proj.bias", [d]),
                ("\(prefix)norm2.weight", [d]), ("\(prefix)norm2.bias", [d]),
                ("\(prefix)mlp.fc1.weight", [hidden, d]), ("\(prefix)mlp.fc1.bias", [hidden]),
                ("\(prefix)mlp.fc2.weight", [d, hidden]), ("\(prefix)mlp.fc2.bias", [d])]
    }
    let tokens = arch.numPrefixTokens + (arch.gridSize.map { $0 * $0 } ?? 0)
    if arch.hasClsToken { out.append(("cls_token", [1, 1, d])) }
    if arch.gridSize != nil { out.append(("pos_embed", [1, tokens, d])) }
    out += [("patch_embed.proj.weight", [d, arch.inChans, p, p]), ("patch_embed.proj.bias", [d])]
    for i in 0..<arch.depth { block("blocks.\(i).", d, arch.mlpHidden) }
    let norm = arch.pooling == .avg ? "fc_norm" : "norm"
    out += [("\(norm).weight", [d]), ("\(norm).bias", [d])]
    if arch.numClasses > 0 { out += [("head.weight", [arch.numClasses, d]), ("head.bias", [arch.numClasses])] }
    if let dec = arch.decoder {
        let dd = dec.embedDim
        out += [("mask_token", [1, 1, dd]), ("decoder_pos_embed", [1, tokens, dd]),
                ("decoder_embed.weight", [dd, d]), ("decoder_embed.bias", [dd])]
        for j in 0..<dec.depth { block("decoder_blocks.\(j).", dd, dec.mlpHidden) }
        out += [("decoder_norm.weight", [dd]), ("decoder_norm.bias", [dd]),
                ("decoder_pred.weight", [dec.predDim, dd]), ("decoder_pred.bias", [dec.predDim])]
    }
    return out
}

/// Number of elements over all tensors (the parameter count of a state dict).
public func parameterCount(_ w: [String: StoredTensor]) -> Int {
    w.values.reduce(0) { $0 + $1.count }
}
