import Foundation

/// The key layouts mae-eval recognises. The canonical names are MAE's official ones
/// (models_mae.py / models_vit.py), which timm and DeiT share for the backbone.
public enum CheckpointLayout: String, Sendable, CaseIterable {
    case maePretrainWithDecoder = "MAE pretrain, encoder + decoder (mae_pretrain_*_full / visualize)"
    case maePretrainEncoder = "MAE pretrain, encoder only (or a timm ViT without a head)"
    case globalPoolFinetuned = "MAE/timm fine-tuned with global pooling (fc_norm + head)"
    case linearProbe = "MAE linear probe (BatchNorm without affine + linear head)"
    case clsTokenClassifier = "timm ViT / DeiT classifier (cls token, norm + head)"
    case deitDistilled = "DeiT distilled (cls + dist tokens, head + head_dist)"
    case unknown = "unrecognised (no ViT patch embedding and blocks)"

    /// A human name for messages and `info`.
    public var name: String { rawValue }
}

/// One renaming rule: keys matching `pattern` (a regular expression over the whole key) become
/// `template` (with $1.. groups); `note` says why, for the report.
public struct KeyRule: Sendable {
    public var pattern: String
    public var template: String
    public var note: String
}

/// Wrapper prefixes peeled off when every key carries one (DataParallel/DDP `module.`, wrappers that
/// keep the ViT as `model.`, `encoder.` or `backbone.`), in the order they are tried.
public let wrapperPrefixes = ["module.", "model.", "encoder.", "backbone.", "_orig_mod."]

/// Renames from other layouts to the canonical names, as data.
public let keyRules: [KeyRule] = [
    KeyRule(pattern: #"^head\.1\.(weight|bias)$"#, template: "head.$1",
            note: "linear-probe head (Sequential[1] Linear) used as the classifier head"),
    KeyRule(pattern: #"^head\.0\.(running_mean|running_var|num_batches_tracked)$"#, template: "head_bn.$1",
            note: "the linear probe's BatchNorm statistics (affine=False), kept as head_bn.*"),
]

/// Keys that are known, kept, but not part of the canonical ViT; each with the reason for the report.
public let knownExtras: [(prefix: String, reason: String)] = [
    ("head_dist.", "DeiT's distillation head, unused (mae-eval's features are the cls token's; DeiT's own eval averages head and head_dist)"),
    ("norm_pre.", "timm's pre-blocks norm (CLIP-style ViTs), which MAE's ViT does not have"),
    ("head_bn.", "the linear probe's BatchNorm statistics"),
    ("pre_logits.", "old timm/DeiT pre-logits layer, unused"),
]

/// What canonicalisation did, for the report.
public struct CanonicalizationReport: Sendable {
    /// The wrapper prefixes removed, outermost first (e.g. ["module."]).
    public var strippedPrefixes: [String] = []
    /// (original key, canonical key, why) for every renamed key.
    public var renamed: [(from: String, to: String, note: String)] = []
    /// Kept keys outside the canonical ViT, with the reason (DeiT's dist_token, timm's norm_pre ...).
    public var extras: [(key: String, reason: String)] = []

    /// Plain-language lines.
    public var lines: [String] {
        var out: [String] = []
        for p in strippedPrefixes { out.append("removed the prefix '\(p)' from every key") }
        for r in renamed { out.append("renamed \(r.from) -> \(r.to) (\(r.note))") }
        for e in extras { out.append("kept \(e.key): \(e.reason)") }
        return out
    }
}

/// Removes wrapper prefixes shared by every key, repeatedly (e.g. `module.encoder.`).
func stripWrapperPrefixes(_ keys: [String]) -> (keys: [String], stripped: [String]) {
    var keys = keys
    var stripped: [String] = []
    while !keys.isEmpty, let p = wrapperPrefixes.first(where: { p in keys.allSatisfy { $0.hasPrefix(p) } }) {
        keys = keys.map { String($0.dropFirst(p.count)) }
        stripped.append(p)
    }
    return (keys, stripped)
}

/// Maps a state dict to the canonical names: strips wrapper prefixes, applies `keyRules`, and notes
/// known extras. Tensors are unchanged (shapes are the same in every recognised layout).
public func canonicalize<T>(_ tensors: [String: T]) -> (weights: [String: T], report: CanonicalizationReport) {
    var report = CanonicalizationReport()
    let original = tensors.keys.sorted()
    let (keys, stripped) = stripWrapperPrefixes(original)
    report.strippedPrefixes = stripped
    let compiled = keyRules.compactMap { rule in
        (try? NSRegularExpression(pattern: rule.pattern)).map { ($0, rule) }
    }
    var out: [String: T] = [:]
    for (orig, key) in zip(original, keys) {
        var name = key
        for (regex, rule) in compiled {
            let range = NSRange(name.startIndex..., in: name)
            if regex.firstMatch(in: name, range: range) != nil {
                name = regex.stringByReplacingMatches(in: name, range: range, withTemplate: rule.template)
                report.renamed.append((key, name, rule.note))
                break
            }
        }
        if let extra = knownExtras.first(where: { name.hasPrefix($0.prefix) }) {
            report.extras.append((name, extra.reason))
        }
        out[name] = tensors[orig]
    }
    return (out, report)
}

/// Recognises the layout from the keys (raw or canonical; wrapper prefixes are ignored).
public func detectLayout(_ keys: [String]) -> CheckpointLayout {
    let set = Set(stripWrapperPrefixes(keys).keys)
    guard set.contains("patch_embed.proj.weight"), set.contains(where: { $0.hasPrefix("blocks.") }) else {
        return .unknown
    }
    if set.contains("decoder_embed.weight") || set.contains(where: { $0.hasPrefix("decoder_blocks.") }) {
        return .maePretrainWithDecoder
    }
    if set.contains("head.1.weight") && set.contains("head.0.running_mean") { return .linearProbe }
    if set.contains("dist_token") || set.contains("head_dist.weight") { return .deitDistilled }
    if set.contains("fc_norm.weight") { return .globalPoolFinetuned }
    if set.contains("head.weight") { return .clsTokenClassifier }
    return .maePretrainEncoder
}
