import Foundation

/// Writes `data` to `url` so that readers see either the old file or the complete new one: the bytes go
/// to a temporary file in the same folder (same file system), which is then renamed over `url`.
public func writeAtomically(_ data: Data, to url: URL) throws {
    let folder = url.deletingLastPathComponent()
    let temp = folder.appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString).tmp")
    do {
        try data.write(to: temp)
    } catch {
        throw FormatError(url.path, "cannot write into the folder \(folder.path) (\(error.localizedDescription))")
    }
    // rename(2) replaces an existing target atomically, which FileManager.moveItem does not.
    if rename(temp.path, url.path) != 0 {
        let reason = String(cString: strerror(errno))
        try? FileManager.default.removeItem(at: temp)
        throw FormatError(url.path, "cannot move the finished file into place (\(reason))")
    }
}
