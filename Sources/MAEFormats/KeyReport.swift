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

    /// Plain-language lines, e.g. "2 missing: head.weight, head.bias" (whether a ViT load refuses them is MAEModels' `refusal`).
    public var lines: [String] {
        var out = ["\(matched.count) weights matched"]
        if !missing.isEmpty {
            out.append("\(missing.count) missing: \(list(missing))")
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
