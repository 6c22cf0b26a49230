// MAEFormats: checkpoint and tensor file formats (safetensors, PyTorch zip checkpoints), key layouts.
import Foundation
import MAEJSON

/// How a checkpoint file is stored.
public enum CheckpointFormat: String, Sendable {
    case safetensors = "safetensors"
    case torchZip = "PyTorch zip checkpoint (torch.save)"
    case pickle = "pickle of numpy arrays (detectron2 model-zoo .pkl)"
}

/// A checkpoint file opened and its state dict found, before any key mapping.
public struct CheckpointFile {
    /// The path as given (for messages).
    public var source: String
    public var format: CheckpointFormat
    /// The state dict's tensors, keys exactly as stored (prefixes such as `module.` still on).
    public var tensors: [String: StoredTensor]
    /// Tensor names in file order.
    public var order: [String]
    /// The top-level key the state dict sat under (`model`, `state_dict`, ...), nil for a bare one.
    public var wrapper: String?
    /// The safetensors `__metadata__` (empty for torch files).
    public var metadata: [String: String]
    /// The other top-level entries of a torch checkpoint (epoch, args, optimizer, scaler ...).
    public var extras: [(key: String, value: PickleValue)]
    /// Entries inside the state dict that are not tensors (ignored).
    public var nonTensorEntries: [String]
    /// Untrusted globals the pickle referred to; they were never called.
    public var placeholders: [String]

    /// Opens a safetensors file, a torch zip checkpoint or a plain pickle of numpy arrays (chosen by
    /// content, not by extension).
    public static func open(_ url: URL) throws -> CheckpointFile {
        let data = try readWholeFile(url)
        if data.count >= 4, data.prefix(4).elementsEqual([0x50, 0x4B, 0x03, 0x04]) || TorchCheckpoint.isLegacyPickle(data) {
            let (value, placeholders) = try TorchCheckpoint.parse(data, source: url.path)
            var file = try fromPickle(value, source: url.path)
            file.placeholders = placeholders
            return file
        }
        if data.count >= 9, data[data.startIndex + 8] == UInt8(ascii: "{") {
            let st = try SafeTensors.parse(data, source: url.path)
            return CheckpointFile(source: url.path, format: .safetensors, tensors: st.tensors, order: st.order,
                                  wrapper: nil, metadata: st.metadata, extras: [], nonTensorEntries: [], placeholders: [])
        }
        if PlainPickle.looksLikePickle(data) {
            let (value, placeholders) = try PlainPickle.parse(data, source: url.path)
            var file = try fromPickle(value, source: url.path)
            file.format = .pickle
            file.placeholders = placeholders
            return file
        }
        if data.isEmpty { throw PathError(url.path, "the file is empty") }
        throw PathError(url.path, "is neither a safetensors file, a PyTorch zip checkpoint nor a pickle of numpy arrays")
    }

    /// Top-level keys that hold the model's state dict, most preferred first (MAE saves `model`;
    /// DeiT/timm training scripts `model` or `state_dict`; EMA weights only when nothing else is there).
    public static let wrapperKeys = ["model", "state_dict", "module", "model_ema", "state_dict_ema"]

    /// Finds the state dict inside an unpickled checkpoint: a bare dict of tensors, or one under a
    /// wrapper key (one or two levels deep, e.g. `{'state_dict': {'model': ...}}`).
    public static func fromPickle(_ value: PickleValue, source: String) throws -> CheckpointFile {
        guard case .dict(let top) = value else {
            throw PathError(source, "holds a \(value.summary(maxLength: 40)) instead of a dict of weights")
        }
        var wrapperPath: [String] = []
        var current = top
        var extras: [(key: String, value: PickleValue)] = []
        for _ in 0..<2 {
            guard let key = wrapperKeys.first(where: { k in isTensorDict(lookup(current, k)) || isWrapper(lookup(current, k)) }),
                  case .dict(let inner)? = lookup(current, key) else { break }
            for entry in current {
                if case .string(let k) = entry.key, k == key { continue }
                extras.append((entry.key.summary(maxLength: 60), entry.value))
            }
            wrapperPath.append(key)
            current = inner
        }
        var tensors: [String: StoredTensor] = [:]
        var order: [String] = []
        var skipped: [String] = []
        for entry in current {
            let name = entry.key.summary(maxLength: 200)
            if case .tensor(let t) = entry.value, case .string = entry.key {
                if tensors.updateValue(t, forKey: name) == nil { order.append(name) }
            } else {
                skipped.append(name)
            }
        }
        guard !tensors.isEmpty else {
            let keys = top.prefix(8).map { $0.key.summary(maxLength: 30) }.joined(separator: ", ")
            throw PathError(source, "holds no weights (its top-level keys are: \(keys.isEmpty ? "none" : keys))")
        }
        return CheckpointFile(source: source, format: .torchZip, tensors: tensors, order: order,
                              wrapper: wrapperPath.isEmpty ? nil : wrapperPath.joined(separator: "."),
                              metadata: [:], extras: extras, nonTensorEntries: skipped, placeholders: [])
    }

    private static func lookup(_ entries: [PickleDictEntry], _ key: String) -> PickleValue? {
        PickleValue.dict(entries)[key]
    }

    /// A dict whose values include tensors and are mostly tensors.
    private static func isTensorDict(_ value: PickleValue?) -> Bool {
        guard case .dict(let entries)? = value else { return false }
        let n = entries.filter { if case .tensor = $0.value { return true } else { return false } }.count
        return n > 0 && 2 * n >= entries.count
    }

    /// A dict that itself wraps a state dict under a wrapper key.
    private static func isWrapper(_ value: PickleValue?) -> Bool {
        guard case .dict(let entries)? = value else { return false }
        return wrapperKeys.contains { isTensorDict(lookup(entries, $0)) }
    }
}
