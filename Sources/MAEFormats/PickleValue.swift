import Foundation

/// A value from a pickle, as inert data. Nothing in a pickle is ever executed: known torch rebuild
/// functions become `.tensor`, `collections.OrderedDict` becomes `.dict`, and every other callable
/// becomes an `.object` placeholder that only records its name and arguments.
public indirect enum PickleValue: Sendable {
    case none
    case bool(Bool)
    case int(Int)
    /// An integer too large for Int, as decimal text.
    case bigInt(String)
    case float(Double)
    case string(String)
    case bytes(Data)
    case list([PickleValue])
    case tuple([PickleValue])
    /// Key/value pairs in pickle order (dicts, OrderedDicts).
    case dict([PickleDictEntry])
    case tensor(StoredTensor)
    /// A reference to a global that was never called (e.g. a class stored as a value), "module.name".
    case global(String)
    /// What an unknown callable would have built: its name and arguments, never run.
    case object(PickleObject)

    /// The value for a string key when this is a dict.
    public subscript(key: String) -> PickleValue? {
        guard case .dict(let entries) = self else { return nil }
        for entry in entries { if case .string(key) = entry.key { return entry.value } }
        return nil
    }

    /// A short human rendering (for `info`): scalars in full, containers summarised.
    public func summary(maxLength: Int = 120) -> String {
        let text: String
        switch self {
        case .none: text = "None"
        case .bool(let b): text = b ? "True" : "False"
        case .int(let i): text = String(i)
        case .bigInt(let s): text = s
        case .float(let d): text = String(d)
        case .string(let s): text = s
        case .bytes(let d): text = "<\(d.count) bytes>"
        case .list(let items): text = "[" + items.prefix(8).map { $0.summary(maxLength: 40) }.joined(separator: ", ") +
            (items.count > 8 ? ", ... (\(items.count) items)" : "") + "]"
        case .tuple(let items): text = "(" + items.prefix(8).map { $0.summary(maxLength: 40) }.joined(separator: ", ") +
            (items.count > 8 ? ", ... (\(items.count) items)" : "") + ")"
        case .dict(let entries): text = "{" + entries.prefix(6).map { "\($0.key.summary(maxLength: 30)): \($0.value.summary(maxLength: 40))" }
            .joined(separator: ", ") + (entries.count > 6 ? ", ... (\(entries.count) entries)" : "") + "}"
        case .tensor(let t): text = "tensor \(t.dtype.rawValue) \(t.shape)"
        case .global(let name): text = "<\(name)>"
        case .object(let o): text = o.summary
        }
        return text.count > maxLength ? String(text.prefix(maxLength - 3)) + "..." : text
    }
}

/// One key/value pair of a pickled dict.
public struct PickleDictEntry: Sendable {
    public var key: PickleValue
    public var value: PickleValue
}

/// The inert stand-in for an object of a type the reader does not trust (e.g. `argparse.Namespace`,
/// `numpy.core.multiarray.scalar`, `os.system`): the type's name and what the pickle passed to it.
public struct PickleObject: Sendable {
    /// "module.name" of the callable or class.
    public var type: String
    /// Arguments of REDUCE / NEWOBJ.
    public var args: [PickleValue]
    /// The BUILD state (for an ordinary class, its attribute dict).
    public var state: PickleValue?
    /// SETITEM(S) / APPEND(S) applied to it.
    public var dictItems: [PickleDictEntry]
    public var listItems: [PickleValue]

    /// The attributes a BUILD gave it (an `argparse.Namespace`'s fields), as name and rendered value.
    public var attributes: [(String, String)] {
        var dict: PickleValue? = state
        // A (dict, slots) state tuple from __getstate__ keeps the dict first.
        if case .tuple(let parts)? = state, let first = parts.first { dict = first }
        guard case .dict(let entries)? = dict else { return [] }
        return entries.compactMap { entry in
            guard case .string(let name) = entry.key else { return nil }
            return (name, entry.value.summary(maxLength: 80))
        }
    }

    var summary: String {
        let fields = attributes
        if !fields.isEmpty {
            return "\(type)(" + fields.map { "\($0.0)=\($0.1)" }.joined(separator: ", ") + ")"
        }
        return "\(type)(" + args.map { $0.summary(maxLength: 40) }.joined(separator: ", ") + ")"
    }
}
