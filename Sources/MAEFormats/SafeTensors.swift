import Foundation
import MAEJSON

/// A safetensors file: named tensors plus string metadata.
///
/// Layout: an 8-byte little-endian u64 N, then N bytes of UTF-8 JSON
/// `{"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {"k": "v"}}`
/// (offsets relative to the first byte after the header; the header may be padded with spaces), then the
/// data. Everything is validated before use: a hostile file gets a thrown `PathError`, never a crash.
public struct SafeTensors {
    public var tensors: [String: StoredTensor]
    /// Names in header order when read; insertion order when built.
    public var order: [String]
    /// The `__metadata__` entry (string to string).
    public var metadata: [String: String]

    /// Builds a file in memory; a repeated name replaces the earlier tensor and keeps its position.
    public init(tensors: [(String, StoredTensor)] = [], metadata: [String: String] = [:]) {
        self.tensors = [:]
        self.order = []
        self.metadata = metadata
        for (name, tensor) in tensors { set(name, tensor) }
    }

    /// Adds or replaces a tensor (a new name goes to the end of `order`).
    public mutating func set(_ name: String, _ tensor: StoredTensor) {
        if tensors.updateValue(tensor, forKey: name) == nil { order.append(name) }
    }

    /// Reads and validates a safetensors file.
    public static func read(contentsOf url: URL) throws -> SafeTensors {
        try parse(readWholeFile(url), source: url.path)
    }

    /// Parses and validates safetensors bytes; `source` names the file in errors.
    public static func parse(_ data: Data, source: String) throws -> SafeTensors {
        func fail(_ reason: String) -> PathError { PathError(source, "not a valid safetensors file: " + reason) }
        guard data.count >= 8 else {
            throw fail(data.isEmpty ? "the file is empty" : "only \(data.count) bytes, too short for the 8-byte header length")
        }
        let base = data.startIndex
        var headerLength: UInt64 = 0
        for i in 0..<8 { headerLength |= UInt64(data[base + i]) << (8 * UInt64(i)) }
        let available = UInt64(data.count - 8)
        guard headerLength <= available else {
            throw fail("the header length \(headerLength) exceeds the \(available) bytes after it (truncated or not safetensors)")
        }
        guard headerLength >= 2 else { throw fail("the header is \(headerLength) bytes, too short for a JSON object") }
        let headerEnd = 8 + Int(headerLength)
        let header: JSONValue
        do {
            header = try JSONValue.parse(data[(base + 8)..<(base + headerEnd)], maxDepth: 64)
        } catch let e as JSONSyntaxError {
            throw fail("the JSON header is malformed at byte \(e.offset) (\(e.message))")
        }
        guard case .object(let entries) = header else { throw fail("the JSON header is not an object") }

        let dataSize = data.count - headerEnd
        var file = SafeTensors()
        var spans: [(begin: Int, end: Int, name: String)] = []
        var seen = Set<String>()
        for (name, entry) in entries {
            guard seen.insert(name).inserted else { throw fail("the name '\(name)' appears twice in the header") }
            if name == "__metadata__" {
                guard case .object(let pairs) = entry else { throw fail("__metadata__ is not an object") }
                for (key, value) in pairs {
                    guard let s = value.stringValue else { throw fail("__metadata__ value for '\(key)' is not a string") }
                    file.metadata[key] = s
                }
                continue
            }
            guard case .object = entry else { throw fail("the entry for '\(name)' is not an object") }
            guard let dtypeName = entry["dtype"]?.stringValue else { throw fail("'\(name)' has no dtype string") }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw fail("'\(name)' has the unsupported dtype '\(dtypeName)'")
            }
            guard case .array(let dims)? = entry["shape"] else { throw fail("'\(name)' has no shape array") }
            let shape = dims.compactMap { $0.intValue }
            guard shape.count == dims.count, shape.allSatisfy({ $0 >= 0 }) else {
                throw fail("the shape of '\(name)' is not a list of non-negative integers")
            }
            guard case .array(let offsets)? = entry["data_offsets"], offsets.count == 2,
                  let begin = offsets[0].intValue, let end = offsets[1].intValue else {
                throw fail("'\(name)' has no data_offsets pair of integers")
            }
            guard 0 <= begin, begin <= end, end <= dataSize else {
                throw fail("the data_offsets [\(begin), \(end)] of '\(name)' fall outside the \(dataSize) data bytes")
            }
            guard let count = elementCount(shape) else {
                throw fail("the shape \(shape) of '\(name)' has too many elements")
            }
            let (size, overflow) = count.multipliedReportingOverflow(by: dtype.itemSize)
            guard !overflow, size == end - begin else {
                throw fail("'\(name)' is \(dtype.rawValue) \(shape) (\(count) x \(dtype.itemSize) bytes) " +
                           "but its data_offsets span \(end - begin) bytes")
            }
            let bytes = data[(base + headerEnd + begin)..<(base + headerEnd + end)]
            file.set(name, try StoredTensor(shape: shape, dtype: dtype, bytes: bytes, source: source))
            spans.append((begin, end, name))
        }
        spans.sort { ($0.begin, $0.end) < ($1.begin, $1.end) }
        for (a, b) in zip(spans, spans.dropFirst()) where b.begin < a.end {
            throw fail("the data of '\(a.name)' and '\(b.name)' overlap")
        }
        return file
    }

    /// The file's bytes: header (names in `order`, metadata first, padded with spaces to 8 bytes), then
    /// each tensor's data back to back.
    public func serialized() throws -> Data {
        var header = JSONObject()
        if !metadata.isEmpty {
            header.append("__metadata__", .object(JSONObject(metadata.sorted { $0.key < $1.key }.map { ($0.key, .string($0.value)) })))
        }
        var offset = 0
        for name in order {
            guard let t = tensors[name] else { throw PathError(name, "listed in order but has no tensor") }
            guard let n = elementCount(t.shape), n * t.dtype.itemSize == t.bytes.count else {
                throw PathError(name, "the shape \(t.shape) does not match its \(t.bytes.count) bytes of \(t.dtype.rawValue)")
            }
            header.append(name, .object(["dtype": .string(t.dtype.rawValue), "shape": .array(t.shape.map { .int($0) }),
                                         "data_offsets": .array([.int(offset), .int(offset + t.bytes.count)])]))
            offset += t.bytes.count
        }
        guard Set(order).count == order.count, order.count == tensors.count else {
            throw PathError("safetensors", "the tensor names and their order disagree")
        }
        var headerBytes = Array(JSONValue.object(header).serialized().utf8)
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        var out = Data(capacity: 8 + headerBytes.count + offset)
        withUnsafeBytes(of: UInt64(headerBytes.count).littleEndian) { out.append(contentsOf: $0) }
        out.append(contentsOf: headerBytes)
        for name in order { out.append(tensors[name]!.bytes) }
        return out
    }

    /// Writes the file atomically (temporary file in the same folder, then rename).
    public func write(to url: URL) throws {
        try writeAtomically(serialized(), to: url)
    }
}

/// The whole file, or a `PathError` naming it when it is missing or unreadable.
func readWholeFile(_ url: URL) throws -> Data {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
        throw PathError(url.path, "no such file")
    }
    guard !isDirectory.boolValue else { throw PathError(url.path, "is a folder, not a file") }
    do {
        return try Data(contentsOf: url)
    } catch {
        throw PathError(url.path, "cannot be read (\(describeCause(error)))")
    }
}
