import Foundation

/// How a state dict compares with the parameters a model expects.
public struct KeyReport: Sendable {
    public var matched: [String] = []
    /// Expected but absent: these would stay at their initial values.
    public var missing: [String] = []
    /// Present but not expected: ignored.
    public var unexpected: [String] = []
    public var misShaped: [(name: String, expected: [Int], actual: [Int])] = []

    /// Compares `expected` (name, shape) with `provided`.
    public init(expected: [(name: String, shape: [Int])], provided: [String: StoredTensor]) {
        self.init(expected: expected, providedShapes: provided.mapValues(\.shape))
    }

    /// Compares `expected` (name, shape) with provided names and shapes.
    public init(expected: [(name: String, shape: [Int])], providedShapes provided: [String: [Int]]) {
        var seen = Set<String>()
        for (name, shape) in expected {
            seen.insert(name)
            guard let actual = provided[name] else { missing.append(name); continue }
            if actual == shape { matched.append(name) } else { misShaped.append((name, shape, actual)) }
        }
        unexpected = provided.keys.filter { !seen.contains($0) }.sorted()
    }

    /// True when every expected weight is present with its shape.
    public var isComplete: Bool { missing.isEmpty && misShaped.isEmpty }

    /// Plain-language lines, e.g. "2 weights missing (left at their initial values): head.weight, head.bias".
    public var lines: [String] {
        var out = ["\(matched.count) weights matched"]
        if !missing.isEmpty {
            out.append("\(missing.count) missing (left at their initial values): \(list(missing))")
        }
        if !misShaped.isEmpty {
            out.append("\(misShaped.count) with the wrong shape: " +
                       list(misShaped.map { "\($0.name) is \($0.actual), expected \($0.expected)" }))
        }
        if !unexpected.isEmpty { out.append("\(unexpected.count) not used: \(list(unexpected))") }
        return out
    }

    private func list(_ names: [String], limit: Int = 12) -> String {
        names.prefix(limit).joined(separator: ", ") + (names.count > limit ? ", ... (\(names.count - limit) more)" : "")
    }
}

/// Names that make up the backbone: a load that leaves any of them random must be refused.
public func isBackboneWeight(_ name: String) -> Bool {
    name == "cls_token" || name == "pos_embed" || name.hasPrefix("patch_embed.") || name.hasPrefix("blocks.")
}

/// Throws a one-sentence error naming the file when a backbone weight is missing or mis-shaped.
public func requireCompleteBackbone(_ report: KeyReport, source: String) throws {
    let missing = report.missing.filter(isBackboneWeight)
    let misShaped = report.misShaped.filter { isBackboneWeight($0.name) }
    guard missing.isEmpty, misShaped.isEmpty else {
        var parts: [String] = []
        if !missing.isEmpty {
            parts.append("\(missing.count) backbone weight(s) missing (\(missing.prefix(4).joined(separator: ", "))" +
                         (missing.count > 4 ? ", ..." : "") + ")")
        }
        if let m = misShaped.first {
            parts.append("\(misShaped.count) with the wrong shape (\(m.name) is \(m.actual), expected \(m.expected))")
        }
        throw FormatError(source, "refusing to load: " + parts.joined(separator: " and ") +
                          ", which would leave the backbone partly random")
    }
}
