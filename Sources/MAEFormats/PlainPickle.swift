import Foundation
import MAEJSON

/// Plain pickles of numpy arrays, as detectron2's model zoo ships its `.pkl` checkpoints:
/// `{"model": {name: numpy.ndarray}, "__author__": ..., "matching_heuristics": True}`, protocol 2 to 5,
/// written by Python 2 or 3 and numpy 1.x or 2.x. Read through the same restricted unpickler as torch
/// checkpoints: arrays are rebuilt from their bytes, nothing is executed.
public enum PlainPickle {
    /// True when `data` starts like a protocol 2-5 pickle (PROTO opcode) and is not torch's legacy format.
    static func looksLikePickle(_ data: Data) -> Bool {
        data.count >= 2 && data[data.startIndex] == 0x80 && (2...5).contains(data[data.startIndex + 1]) &&
            !TorchCheckpoint.isLegacyPickle(data)
    }

    /// Parses a plain pickle's bytes into inert values; `source` names the file in errors.
    public static func parse(_ data: Data, source: String) throws -> (value: PickleValue, placeholders: [String]) {
        guard looksLikePickle(data) else { throw PathError(source, "is not a pickle (protocol 2 to 5)") }
        // Arrays hold their bytes inline, so they can never need more memory than the file's size.
        var unpickler = Unpickler(data, source: source, tensorBudget: data.count) { key, _, _ in
            throw PathError(source, "refers to a torch storage '\(key)', which only a torch.save zip archive holds")
        }
        let value = try unpickler.run()
        return (value, unpickler.placeholders)
    }
}
