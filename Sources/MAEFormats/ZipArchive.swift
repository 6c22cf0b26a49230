import Foundation
import MAEJSON

/// A read-only view of a zip archive whose entries are stored (not compressed), as torch.save writes
/// them. Reads the central directory (with ZIP64 records, which checkpoints over 4 GiB need) and checks
/// every offset and length against the file size before use.
struct ZipArchive {
    struct Entry {
        var name: String
        /// Byte range of the entry's data inside the archive's `data`.
        var range: Range<Int>
    }

    let data: Data
    let source: String
    /// Entries in central-directory order.
    private(set) var entries: [Entry] = []
    private var byName: [String: Int] = [:]

    init(data: Data, source: String) throws {
        self.data = data
        self.source = source
        try readCentralDirectory()
    }

    /// The bytes of the entry called `name`, or nil if the archive has none.
    func contents(of name: String) -> Data? {
        guard let i = byName[name] else { return nil }
        let base = data.startIndex
        return data[(base + entries[i].range.lowerBound)..<(base + entries[i].range.upperBound)]
    }

    private func fail(_ reason: String) -> PathError {
        PathError(source, "not a readable PyTorch zip checkpoint: " + reason)
    }

    private func u16(_ at: Int) -> Int { Int(data[data.startIndex + at]) | Int(data[data.startIndex + at + 1]) << 8 }
    private func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
    private func u64(_ at: Int) -> UInt64 { UInt64(u32(at)) | UInt64(u32(at + 4)) << 32 }

    /// A u64 field as Int, refused when larger than the file (every size and offset must fit inside it).
    private func bounded(_ value: UInt64, _ what: String) throws -> Int {
        guard value <= UInt64(data.count) else { throw fail("the \(what) \(value) exceeds the file size \(data.count)") }
        return Int(value)
    }

    private mutating func readCentralDirectory() throws {
        let n = data.count
        guard n >= 22 else { throw fail("the file is too short (\(n) bytes) to be a zip archive") }
        // The end-of-central-directory record is in the last 22 + 65535 (comment) bytes.
        var eocd = -1
        var p = n - 22
        while p >= max(0, n - 22 - 65535) {
            if u32(p) == 0x0605_4b50 { eocd = p; break }
            p -= 1
        }
        guard eocd >= 0 else { throw fail("no zip end-of-central-directory record was found (truncated?)") }
        var count = u16(eocd + 10)
        var cdSize = u32(eocd + 12)
        var cdOffset = u32(eocd + 16)
        if count == 0xFFFF || cdSize == 0xFFFF_FFFF || cdOffset == 0xFFFF_FFFF {
            // ZIP64: a 20-byte locator just before the EOCD points at the ZIP64 EOCD record.
            guard eocd >= 20, u32(eocd - 20) == 0x0706_4b50 else { throw fail("the ZIP64 locator is missing") }
            let recordAt = try bounded(u64(eocd - 20 + 8), "ZIP64 record offset")
            guard recordAt + 56 <= n, u32(recordAt) == 0x0606_4b50 else { throw fail("the ZIP64 end record is missing") }
            count = try bounded(u64(recordAt + 32), "entry count")
            cdSize = try bounded(u64(recordAt + 40), "central directory size")
            cdOffset = try bounded(u64(recordAt + 48), "central directory offset")
        }
        guard cdOffset <= n, cdSize <= n - cdOffset else {
            throw fail("the central directory (\(cdSize) bytes at \(cdOffset)) lies outside the file")
        }
        var at = cdOffset
        let end = cdOffset + cdSize
        for _ in 0..<count {
            guard at + 46 <= end, u32(at) == 0x0201_4b50 else { throw fail("a central directory entry is malformed") }
            let flags = u16(at + 8)
            let method = u16(at + 10)
            var compressed = u32(at + 20)
            var size = u32(at + 24)
            let nameLength = u16(at + 28), extraLength = u16(at + 30), commentLength = u16(at + 32)
            var localAt = u32(at + 42)
            let nameAt = at + 46
            guard nameAt + nameLength + extraLength + commentLength <= end else {
                throw fail("a central directory entry runs past the directory")
            }
            let name = String(decoding: data[(data.startIndex + nameAt)..<(data.startIndex + nameAt + nameLength)], as: UTF8.self)
            // ZIP64 extra field (id 1): the 64-bit values of exactly those fields that hold 0xFFFFFFFF.
            var e = nameAt + nameLength
            let extraEnd = e + extraLength
            while e + 4 <= extraEnd {
                let id = u16(e), length = u16(e + 2)
                guard e + 4 + length <= extraEnd else { throw fail("the extra field of '\(name)' is malformed") }
                if id == 1 {
                    var f = e + 4
                    func next() throws -> Int {
                        guard f + 8 <= e + 4 + length else { throw fail("the ZIP64 field of '\(name)' is too short") }
                        defer { f += 8 }
                        return try bounded(u64(f), "ZIP64 size or offset")
                    }
                    if size == 0xFFFF_FFFF { size = try next() }
                    if compressed == 0xFFFF_FFFF { compressed = try next() }
                    if localAt == 0xFFFF_FFFF { localAt = try next() }
                }
                e += 4 + length
            }
            at = extraEnd + commentLength
            if flags & 1 != 0 { throw fail("the entry '\(name)' is encrypted") }
            if method != 0 {
                throw fail("the entry '\(name)' is compressed (zip method \(method)); torch.save writes stored " +
                           "entries, so re-save the checkpoint with torch.save instead of re-zipping it")
            }
            guard compressed == size else { throw fail("the stored entry '\(name)' has two different sizes") }
            guard localAt <= n - 30, u32(localAt) == 0x0403_4b50 else {
                throw fail("the local header of '\(name)' is missing")
            }
            let dataAt = localAt + 30 + u16(localAt + 26) + u16(localAt + 28)
            guard dataAt <= n, size <= n - dataAt else {
                throw fail("the data of '\(name)' (\(size) bytes) runs past the end of the file (truncated?)")
            }
            if byName[name] == nil { byName[name] = entries.count }
            entries.append(Entry(name: name, range: dataAt..<(dataAt + size)))
        }
    }
}
