import Foundation
import MAEFormats
import MAEJSON

/// Everything `mae-eval info` says about a checkpoint, gathered without loading a model.
public struct CheckpointInfo {
    public var file: CheckpointFile
    public var layout: CheckpointLayout
    public var canonical: CanonicalizationReport
    public var architecture: InferredArchitecture
    public var keys: KeyReport
    /// Elements of the weights the architecture uses, of the decoder's alone, and of unused tensors.
    public var parameters: Int
    public var decoderParameters: Int
    public var unusedParameters: Int
    /// The weights the architecture uses that hold NaN or infinite values, in checkpoint order:
    /// (canonical name, name as stored, what was found). F16/BF16/F64 are checked after conversion.
    public var nonFinite: [(name: String, stored: String, count: NonFiniteCount)] = []
    /// Why a backbone load (extract, linprobe, knn, finetune) would refuse this file, nil when it
    /// would not: the same sentence `loadVisionTransformer` fails with.
    public var refusal: String? { refusal(decoder: false, head: false) }

    /// Opens and analyses `url`; throws a one-sentence error for unreadable files and non-ViT layouts.
    public init(contentsOf url: URL) throws {
        file = try CheckpointFile.open(url)
        layout = detectLayout(file.order)
        guard layout != .unknown else {
            let sample = file.order.prefix(4).joined(separator: ", ")
            throw PathError(file.source, "has an unrecognised key layout (no ViT patch_embed and blocks; keys start " +
                              "with \(sample))")
        }
        let (weights, report) = canonicalize(file.tensors)
        canonical = report
        architecture = try inferArchitecture(weights, metadata: file.metadata, source: file.source)
        keys = KeyReport(expected: architecture.parameterLayout.shapes, provided: weights)
        let used = Set(keys.matched)
        parameters = parameterCount(weights.filter { used.contains($0.key) })
        decoderParameters = parameterCount(weights.filter { used.contains($0.key) && isDecoderWeight($0.key) })
        unusedParameters = parameterCount(weights.filter { !used.contains($0.key) })
        // Checkpoint order, so the first bad tensor named is the first one in the file.
        let rawNames = Dictionary(file.order.map { ($0, $0) }, uniquingKeysWith: { first, _ in first })
        let storedName = Dictionary(canonicalize(rawNames).weights.map { ($0.value, $0.key) },
                                    uniquingKeysWith: { first, _ in first })
        for raw in file.order {
            guard let name = storedName[raw], used.contains(name), let t = weights[name], t.dtype.isFloatingPoint,
                  let found = t.nonFiniteCount else { continue }
            nonFinite.append((name, raw, found))
        }
    }

    /// Why a load that needs the backbone, plus the decoder and/or the checkpoint's head when asked,
    /// refuses this file (missing or mis-shaped weights first, then non-finite values); nil when it
    /// would load. `loadVisionTransformer` and `info` both ask this, so they always agree.
    public func refusal(decoder: Bool, head: Bool) -> String? {
        if let missing = keys.refusal(decoder: decoder, head: head) { return missing }
        if let bad = nonFinite.first(where: { KeyReport.isNeeded($0.name, decoder: decoder, head: head) }) {
            return "\(bad.stored) holds \(bad.count.phrase) (first at element \(bad.count.first)); " +
                "refusing to evaluate a broken checkpoint"
        }
        return nil
    }

    /// The report `info` prints, one fact per line.
    public var rendered: String {
        var out: [String] = []
        func line(_ label: String, _ value: String) { out.append(label.padding(toLength: 13, withPad: " ", startingAt: 0) + value) }
        let a = architecture
        line("file", file.source)
        line("format", file.format.rawValue)
        let dtypes = Dictionary(grouping: file.tensors.values, by: \.dtype.rawValue)
            .map { "\($0.value.count) \($0.key)" }.sorted().joined(separator: ", ")
        line("state dict", "\(file.tensors.count) tensors (\(dtypes))" +
             (file.wrapper.map { ", under '\($0)'" } ?? ", at the top level"))
        line("layout", layout.name)
        line("architecture", a.summary)
        let heads = a.numHeads == nil
            ? "unknown: no head count in the metadata and no standard preset of width \(a.embedDim), depth \(a.depth); pass --heads"
            : "\(a.numHeads!) from \(a.headsSource.rawValue)"
        line("heads", heads)
        line("parameters", "\(grouped(parameters))" + (decoderParameters > 0
            ? " (encoder and head \(grouped(parameters - decoderParameters)), decoder \(grouped(decoderParameters)))" : "") +
             (unusedParameters > 0 ? "; plus \(grouped(unusedParameters)) in tensors the model does not use" : ""))
        line("decoder", a.decoder == nil ? "no" : "yes (MAE reconstruction decoder)")
        for key in ["method", "data", "recipe", "epochs", "final_loss", "seed", "created", "mae_eval_version"] {
            if let v = file.metadata[key] { line(key, v) }
        }
        for (k, v) in file.metadata.sorted(by: { $0.key < $1.key }) where !Self.shownMetadata.contains(k) {
            line("metadata", "\(k) = \(v.count > 200 ? String(v.prefix(197)) + "..." : v)")
        }
        for extra in file.extras { out += describeExtra(extra.key, extra.value) }
        if !file.placeholders.isEmpty {
            let names = Array(Set(file.placeholders)).sorted().joined(separator: ", ")
            line("not run", "objects of untrusted types kept as inert placeholders: \(names)")
        }
        if !file.nonTensorEntries.isEmpty {
            line("ignored", "non-tensor entries in the state dict: " + file.nonTensorEntries.prefix(8).joined(separator: ", "))
        }
        for l in canonical.lines { line("key mapping", l) }
        for l in keys.lines { line("keys", l) }
        line("loadable", refusal.map { "no: \($0)" } ?? "yes, every backbone weight is present with its shape and finite")
        if a.decoder != nil {
            line("visualize", refusal(decoder: true, head: false).map { "no: \($0)" } ?? "yes, the decoder is complete")
        }
        if a.distilled {
            line("DeiT", "distilled: cls and dist tokens both run in the sequence; --pool cls is the cls token after " +
                 "norm (DeiT's own eval averages the logits of head and head_dist, which mae-eval does not use)")
        }
        return out.joined(separator: "\n")
    }

    private static let shownMetadata: Set<String> = ["method", "data", "recipe", "epochs", "final_loss", "seed", "created",
                                                    "mae_eval_version"]

    /// Training extras of a torch checkpoint in words: epoch, args fields, optimizer and scaler summaries.
    private func describeExtra(_ key: String, _ value: PickleValue) -> [String] {
        let label = key.padding(toLength: 13, withPad: " ", startingAt: 0)
        if case .object(let o) = value, !o.attributes.isEmpty {
            return ["\(label)\(o.type) with \(o.attributes.count) fields:"] +
                o.attributes.map { "  \($0.0) = \($0.1)" }
        }
        if case .dict = value, case .list(let groups)? = value["param_groups"] {
            var text = "optimizer state"
            if case .dict(let state)? = value["state"] { text += " for \(state.count) parameters" }
            text += ", \(groups.count) parameter group(s)"
            if let first = groups.first {
                let hyper = ["lr", "betas", "weight_decay", "momentum", "eps"].compactMap { k in
                    first[k].map { "\(k)=\($0.summary(maxLength: 30))" }
                }
                if !hyper.isEmpty { text += " (first: " + hyper.joined(separator: ", ") + ")" }
            }
            return [label + text]
        }
        return [label + value.summary(maxLength: 160)]
    }
}

/// 86567656 -> "86,567,656 (86.6 M)".
private func grouped(_ n: Int) -> String {
    var digits = String(n)
    var i = digits.count - 3
    while i > 0 { digits.insert(",", at: digits.index(digits.startIndex, offsetBy: i)); i -= 3 }
    return n >= 1_000_000 ? "\(digits) (\(String(format: "%.1f", Double(n) / 1e6)) M)" : digits
}

/// Number of elements over all tensors (the parameter count of a state dict).
private func parameterCount(_ w: [String: StoredTensor]) -> Int {
    w.values.reduce(0) { $0 + $1.count }
}
