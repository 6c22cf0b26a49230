import Foundation
import MAEJSON

/// PyTorch checkpoints in torch.save's zip format (torch >= 1.6): `<archive>/data.pkl`, a pickle whose
/// tensors refer by persistent id to raw little-endian storages at `<archive>/data/<key>`.
public enum TorchCheckpoint {
    /// Reads a checkpoint as inert data: tensors materialised, untrusted objects as placeholders.
    public static func read(contentsOf url: URL) throws -> PickleValue {
        try load(contentsOf: url).value
    }

    /// The pickle's value plus the names of the untrusted globals it referred to (never called).
    public static func load(contentsOf url: URL) throws -> (value: PickleValue, placeholders: [String]) {
        try parse(readWholeFile(url), source: url.path)
    }

    /// Parses checkpoint bytes; `source` names the file in errors.
    public static func parse(_ data: Data, source: String) throws -> (value: PickleValue, placeholders: [String]) {
        guard !data.isEmpty else { throw PathError(source, "the file is empty") }
        if isLegacyPickle(data) {
            throw PathError(source, "was saved in PyTorch's legacy (pre-1.6, non-zip) format, which mae-eval does " +
                              "not read; re-save it with a current torch.save")
        }
        guard data.count >= 4, data.prefix(4).elementsEqual([0x50, 0x4B, 0x03, 0x04]) else {
            throw PathError(source, "is neither a safetensors file nor a PyTorch zip checkpoint")
        }
        let zip = try ZipArchive(data: data, source: source)
        // The archive's folder name is whatever the file was first called; find it through data.pkl.
        let pickles = zip.entries.map(\.name).filter { $0 == "data.pkl" || $0.hasSuffix("/data.pkl") }
        guard let pickleName = pickles.min(by: { $0.count < $1.count }), let pickle = zip.contents(of: pickleName) else {
            throw PathError(source, "is a zip archive without the data.pkl of a PyTorch checkpoint")
        }
        let prefix = String(pickleName.dropLast("data.pkl".count))
        if let order = zip.contents(of: prefix + "byteorder"),
           String(decoding: order, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) == "big" {
            throw PathError(source, "was saved on a big-endian machine, which mae-eval does not read")
        }
        var unpickler = Unpickler(pickle, source: source, tensorBudget: 4 * data.count + (16 << 20)) { key, dtype, count in
            guard let bytes = zip.contents(of: prefix + "data/" + key) else {
                throw PathError(source, "refers to the storage '\(key)', which the archive does not hold")
            }
            guard bytes.count / dtype.itemSize >= count else {
                throw PathError(source, "the storage '\(key)' holds \(bytes.count) bytes, fewer than \(count) " +
                                  "\(dtype.rawValue) elements need (truncated?)")
            }
            return bytes
        }
        let value = try unpickler.run()
        return (value, unpickler.placeholders)
    }

    /// torch.save's old format starts with a pickled magic number (LONG1 0x1950a86a20f9469cfc6c).
    static func isLegacyPickle(_ data: Data) -> Bool {
        let magic: [UInt8] = [0x80, 0x02, 0x8A, 0x0A, 0x6C, 0xFC, 0x9C, 0x46, 0xF9, 0x20, 0x6A, 0xA8, 0x50, 0x19]
        return data.count >= magic.count && data.prefix(magic.count).elementsEqual(magic)
    }
}
