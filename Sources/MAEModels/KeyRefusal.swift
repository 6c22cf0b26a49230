import MAEFormats

/// Names that make up the backbone, the final norm the pooling reads included: a load that leaves any
/// of them random must be refused.
public func isBackboneWeight(_ name: String) -> Bool {
    ["cls_token", "dist_token", "pos_embed"].contains(name) ||
        ["patch_embed.", "blocks.", "norm.", "fc_norm."].contains { name.hasPrefix($0) }
}

/// The classification head's weights (needed only when a command keeps the checkpoint's head).
public func isHeadWeight(_ name: String) -> Bool { name.hasPrefix("head.") }

extension KeyReport {
    /// Whether a load needs `name`: always for the backbone, and the decoder's or the head's weights
    /// when the command keeps them (visualize needs the decoder).
    public static func isNeeded(_ name: String, decoder: Bool, head: Bool) -> Bool {
        isBackboneWeight(name) || (decoder && isDecoderWeight(name)) || (head && isHeadWeight(name))
    }

    /// The reason (one sentence fragment) a load needing the backbone, plus the decoder and/or head
    /// when asked, is refused because weights it needs are missing or mis-shaped; nil when none are.
    public func refusal(decoder: Bool = false, head: Bool = false) -> String? {
        let needed = { (name: String) in KeyReport.isNeeded(name, decoder: decoder, head: head) }
        let missing = self.missing.filter(needed)
        let misShaped = self.misShaped.filter { needed($0.name) }
        guard !missing.isEmpty || !misShaped.isEmpty else { return nil }
        let names = missing + misShaped.map(\.name)
        let part = [("backbone", isBackboneWeight), ("decoder", isDecoderWeight), ("head", isHeadWeight)]
            .first { _, test in names.allSatisfy(test) }?.0
        let what = (part.map { $0 + " " } ?? "") + "weight"
        var parts: [String] = []
        if !missing.isEmpty {
            parts.append("\(missing.count) \(what)\(missing.count == 1 ? " is" : "s are") missing (" +
                         Self.listed(Self.grouped(missing)) + ")")
        }
        if !misShaped.isEmpty {
            parts.append("\(misShaped.count) \(what)\(misShaped.count == 1 ? " has" : "s have") the wrong shape (" +
                         Self.listed(misShaped.map { "\($0.name) is \($0.actual), expected \($0.expected)" }, limit: 3) + ")")
        }
        return "refusing to load: " + parts.joined(separator: " and ") +
            ", which would leave the " + (part ?? "model") + " partly random"
    }

    /// Names with every tensor of one transformer block folded into "blocks.3.*".
    static func grouped(_ names: [String]) -> [String] {
        func blockPrefix(_ name: String) -> String? {
            for p in ["blocks.", "decoder_blocks."] where name.hasPrefix(p) {
                let index = name.dropFirst(p.count).prefix { $0 != "." }
                if !index.isEmpty { return p + index + "." }
            }
            return nil
        }
        var counts: [String: Int] = [:]
        for n in names { if let b = blockPrefix(n) { counts[b, default: 0] += 1 } }
        var out: [String] = [], folded = Set<String>()
        for n in names {
            if let b = blockPrefix(n), counts[b] == tensorsPerBlock {
                if folded.insert(b).inserted { out.append(b + "*") }
            } else {
                out.append(n)
            }
        }
        return out
    }

    /// "a, b, c, and 4 more".
    static func listed(_ items: [String], limit: Int = 6) -> String {
        items.prefix(limit).joined(separator: ", ") + (items.count > limit ? ", and \(items.count - limit) more" : "")
    }

    /// Tensors of one transformer block (norm1, qkv, proj, norm2, fc1, fc2; weight and bias each).
    static let tensorsPerBlock = 12
}

/// Keys of MAE's reconstruction decoder.
public func isDecoderWeight(_ name: String) -> Bool {
    name.hasPrefix("decoder_") || name == "mask_token"
}
