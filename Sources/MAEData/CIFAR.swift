import Foundation
import MAEJSON

/// CIFAR-10 / CIFAR-100 in their binary form (`cifar-10-batches-bin`, `cifar-100-binary`).
public struct CIFARDataset: Sendable {
    public enum Split: Sendable { case train, test }

    /// (N, 32, 32, 3) bytes, HWC per image.
    public var pixels: [UInt8]
    /// Class per image: CIFAR-10's label, or CIFAR-100's fine label.
    public var labels: [Int]
    /// CIFAR-100's coarse (superclass) labels; nil for CIFAR-10.
    public var coarseLabels: [Int]?
    /// Class names from batches.meta.txt / fine_label_names.txt when present, else "0", "1", ...
    public var classes: [String]

    public var count: Int { labels.count }

    /// The image at `index`.
    public func image(_ index: Int) -> RGBImage {
        RGBImage(width: 32, height: 32, pixels: Array(pixels[(index * 3072)..<((index + 1) * 3072)]))
    }

    /// Loads a split from `folder`: CIFAR-10 if it holds data_batch_*.bin, CIFAR-100 if train.bin.
    public static func load(folder: URL, split: Split) throws -> CIFARDataset {
        let fm = FileManager.default
        let c10 = split == .train ? (1...5).map { "data_batch_\($0).bin" } : ["test_batch.bin"]
        let c100 = split == .train ? "train.bin" : "test.bin"
        if fm.fileExists(atPath: folder.appendingPathComponent(c10[0]).path) {
            var out = CIFARDataset(pixels: [], labels: [], coarseLabels: nil, classes: [])
            for name in c10 { try out.append(file: folder.appendingPathComponent(name), labelBytes: 1) }
            out.classes = names(folder.appendingPathComponent("batches.meta.txt"), count: 10)
            return out
        }
        if fm.fileExists(atPath: folder.appendingPathComponent(c100).path) {
            var out = CIFARDataset(pixels: [], labels: [], coarseLabels: [], classes: [])
            try out.append(file: folder.appendingPathComponent(c100), labelBytes: 2)
            out.classes = names(folder.appendingPathComponent("fine_label_names.txt"), count: 100)
            return out
        }
        throw PathError(folder, "holds no CIFAR binary batches (\(c10[0]) for CIFAR-10 or \(c100) for CIFAR-100)", period: false)
    }

    /// Appends one batch file: records of `labelBytes` label bytes (coarse then fine for CIFAR-100)
    /// and 3072 bytes of R, G and B planes, each 32 x 32 row-major.
    mutating func append(file: URL, labelBytes: Int) throws {
        let data = [UInt8](try readFile(file))
        let record = labelBytes + 3072
        guard !data.isEmpty, data.count % record == 0 else {
            throw PathError(file, "is \(data.count) bytes, not a whole number of \(record)-byte CIFAR records", period: false)
        }
        let n = data.count / record
        let limit = labelBytes == 1 ? 10 : 100
        pixels.reserveCapacity(pixels.count + n * 3072)
        for r in 0..<n {
            let base = r * record
            let label = Int(data[base + labelBytes - 1])
            guard label < limit else {
                throw PathError(file, "has label \(label) in record \(r), outside the \(limit) CIFAR classes", period: false)
            }
            labels.append(label)
            if labelBytes == 2 { coarseLabels?.append(Int(data[base])) }
            let planes = base + labelBytes
            for i in 0..<1024 {
                pixels.append(data[planes + i]); pixels.append(data[planes + 1024 + i]); pixels.append(data[planes + 2048 + i])
            }
        }
    }

    static func names(_ url: URL, count: Int) -> [String] {
        if let text = try? String(contentsOf: url, encoding: .utf8) {
            let lines = text.split(whereSeparator: \.isNewline).map(String.init).filter { !$0.isEmpty }
            if lines.count == count { return lines }
        }
        return (0..<count).map(String.init)
    }
}
