import CYaml
import Foundation
import Yams

/// Bounds a YAML text must keep before Yams builds a tree of it. Yams composes recursively (200,000
/// nested `[` overflow the stack) and expands aliases into copies (a billion-laughs file never ends),
/// so the text is first walked as libyaml events, which are read iteratively, and refused past these.
public struct YAMLLimits: Sendable {
    /// Bytes of text.
    public var maxBytes = 1 << 20
    /// Nested mappings and sequences.
    public var maxDepth = 64
    /// Scalars, mappings and sequences in all.
    public var maxNodes = 100_000

    public init() {}
}

/// Checks `text` against `limits` and refuses anchors and aliases (a task spec has no use for them,
/// and refusing them outright bounds the tree by the text). Returns nil when the text may be given to
/// Yams, else the problem as a sentence fragment ("nests deeper than 64 levels at line 3, column 7").
public func yamlShapeProblem(_ text: String, limits: YAMLLimits = YAMLLimits()) -> String? {
    let bytes = Array(text.utf8)
    guard bytes.count <= limits.maxBytes else {
        return "is \(bytes.count) bytes long, more than a task spec may be (\(limits.maxBytes))"
    }
    var parser = yaml_parser_t()
    guard yaml_parser_initialize(&parser) == 1 else { return "cannot be read (the YAML parser did not start)" }
    defer { yaml_parser_delete(&parser) }
    return bytes.withUnsafeBufferPointer { buffer -> String? in
        yaml_parser_set_input_string(&parser, buffer.baseAddress, buffer.count)
        var depth = 0, nodes = 0, documents = 0
        while true {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) == 1 else {
                let problem = parser.problem.map { String(cString: $0) } ?? "a syntax error"
                let mark = parser.problem_mark
                return "is not valid YAML: \(problem) at line \(mark.line + 1), column \(mark.column + 1)"
            }
            defer { yaml_event_delete(&event) }
            let line = "line \(event.start_mark.line + 1), column \(event.start_mark.column + 1)"
            switch event.type {
            case YAML_STREAM_END_EVENT:
                return nil
            case YAML_DOCUMENT_START_EVENT:
                documents += 1
                if documents > 1 { return "holds more than one YAML document (a second one starts at \(line))" }
            case YAML_ALIAS_EVENT:
                return "uses an alias (*name) at \(line); anchors and aliases are not allowed in a task spec"
            case YAML_SCALAR_EVENT, YAML_SEQUENCE_START_EVENT, YAML_MAPPING_START_EVENT:
                let anchor = event.type == YAML_SCALAR_EVENT ? event.data.scalar.anchor
                    : event.type == YAML_SEQUENCE_START_EVENT ? event.data.sequence_start.anchor
                    : event.data.mapping_start.anchor
                if anchor != nil {
                    return "defines an anchor (&name) at \(line); anchors and aliases are not allowed in a task spec"
                }
                nodes += 1
                if nodes > limits.maxNodes { return "has more than \(limits.maxNodes) values" }
                if event.type != YAML_SCALAR_EVENT {
                    depth += 1
                    if depth > limits.maxDepth { return "nests deeper than \(limits.maxDepth) levels at \(line)" }
                }
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                depth -= 1
            default:
                break
            }
        }
    }
}

/// Composes a YAML text that passed `yamlShapeProblem` into Yams' node tree; `source` names it in errors.
func composeBounded(_ text: String, source: String) throws -> Node? {
    if let problem = yamlShapeProblem(text) { throw TaskSpecError(path: source, problem: problem) }
    do { return try Yams.compose(yaml: text) } catch {
        // The event walk already read the whole text, so this is rare (e.g. a tag Yams does not know).
        throw TaskSpecError(path: source, problem: "is not valid YAML")
    }
}

extension Node {
    /// The value as it reads in the file, for messages: `ten`, `[fast]`, `{a: 1}`.
    var quoted: String {
        switch self {
        case .scalar(let s): s.string
        case .sequence(let s): "[" + s.map(\.quoted).joined(separator: ", ") + "]"
        case .mapping(let m): "{" + m.map { "\($0.key.quoted): \($0.value.quoted)" }.joined(separator: ", ") + "}"
        }
    }
}
