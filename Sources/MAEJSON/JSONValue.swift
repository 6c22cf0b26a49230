// JSON values for the checkpoint formats (safetensors headers, checkpoint metadata) and the COCO files.
//
// Why not Foundation's JSONSerialization: it loses object key order (safetensors' header order is
// meaningful to users), and on Linux it returns long decimals such as 0.35000000000000003 as
// NSDecimalNumber whose doubleValue is off by several ulps, which moves box IoUs away from pycocotools'.

/// A JSON value: objects keep their keys in file order, numbers keep their exact value.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// An integer number.
    public static func int(_ value: Int) -> JSONValue { .number(JSONNumber(value)) }

    /// A floating-point number (written in its shortest round-trip form; non-finite values as null).
    public static func double(_ value: Double) -> JSONValue { .number(JSONNumber(value)) }

    /// The number as an Int, if it is an integer written without fraction or exponent that fits.
    public var intValue: Int? {
        guard case .number(let n) = self else { return nil }
        return n.intValue
    }

    /// The number, correctly rounded to a Double.
    public var doubleValue: Double? {
        guard case .number(let n) = self else { return nil }
        return n.doubleValue
    }

    /// The string, if this is one.
    public var stringValue: String? {
        guard case .string(let s) = self else { return nil }
        return s
    }

    /// The Boolean, if this is one.
    public var boolValue: Bool? {
        guard case .bool(let b) = self else { return nil }
        return b
    }

    /// The elements, if this is an array.
    public var arrayValue: [JSONValue]? {
        guard case .array(let a) = self else { return nil }
        return a
    }

    /// The members, if this is an object.
    public var objectValue: JSONObject? {
        guard case .object(let o) = self else { return nil }
        return o
    }

    /// The value of `key` (its last occurrence) if this is an object that has it.
    public subscript(key: String) -> JSONValue? {
        guard case .object(let o) = self else { return nil }
        return o[key]
    }
}

/// A JSON object: members in file order, with keyed lookup.
///
/// A key may repeat (JSON allows it); lookups find its last occurrence, as Python's json does.
/// Large objects (a safetensors header) carry a hash index; small ones (a COCO detection) are
/// searched linearly, which is faster than hashing a handful of short keys.
public struct JSONObject: Equatable, Sendable, RandomAccessCollection, ExpressibleByDictionaryLiteral {
    public typealias Element = (key: String, value: JSONValue)

    /// The members, in order.
    public private(set) var members: [Element]
    /// Key -> position of its last occurrence; empty until the object has more than `indexedFrom` members.
    private var index: [String: Int] = [:]
    private static let indexedFrom = 12

    /// An object with these members, in this order.
    public init(_ members: [Element] = []) {
        self.members = members
        if members.count > Self.indexedFrom { rebuildIndex() }
    }

    /// An object with the literal's members, in the literal's order.
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        self.init(elements.map { (key: $0.0, value: $0.1) })
    }

    public var startIndex: Int { 0 }
    public var endIndex: Int { members.count }
    public subscript(position: Int) -> Element { members[position] }

    /// The keys, in order (repeats included).
    public var keys: [String] { members.map(\.key) }

    /// The value of `key` (its last occurrence). Setting replaces that value, or appends the key if
    /// it is new; setting nil removes every occurrence.
    public subscript(key: String) -> JSONValue? {
        get { position(of: key).map { members[$0].value } }
        set {
            if let newValue {
                if let i = position(of: key) { members[i].value = newValue } else { append(key, newValue) }
            } else {
                members.removeAll { $0.key == key }
                rebuildIndex()
            }
        }
    }

    /// Appends a member, even if the key is already present.
    public mutating func append(_ key: String, _ value: JSONValue) {
        members.append((key, value))
        if members.count > Self.indexedFrom {
            if index.isEmpty { rebuildIndex() } else { index[key] = members.count - 1 }
        }
    }

    private func position(of key: String) -> Int? {
        if members.count > Self.indexedFrom { return index[key] }
        return members.lastIndex { $0.key == key }
    }

    private mutating func rebuildIndex() {
        index = [:]
        guard members.count > Self.indexedFrom else { return }
        index.reserveCapacity(members.count)
        for (i, m) in members.enumerated() { index[m.key] = i }
    }

    /// Equal when the members are, in the same order.
    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.members.count == b.members.count && zip(a.members, b.members).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}
