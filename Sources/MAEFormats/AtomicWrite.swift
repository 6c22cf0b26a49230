import Foundation
import MAEJSON

// Every file mae-eval writes (safetensors, checkpoints, metrics, logs, reports, PNG figures, features,
// `--out` files) goes through `writeAtomically`, and every output path is checked before the work by
// `checkOutputFile` / `prepareOutputFolder`. The rule for what is at the path:
//
// - nothing, or a regular file: the bytes go to `.<name>.<UUID>.tmp` in the same folder, are fsync'd,
//   and the temporary is renamed over the path, so a reader sees the old file or the whole new one.
//   The temporary is removed on every failure (a full disk included); a replaced file keeps its mode.
// - a symbolic link: the link's target is written by the rule above; the link itself stays.
// - a character device or a FIFO (`/dev/null`, a terminal, a named pipe): written through in place,
//   never renamed over.
// - `/dev/stdout`, `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`: written to that open descriptor,
//   whatever it is (a redirect to a file appends after what was printed, as a shell does).
// - a folder, a block device or a socket: refused in one sentence, nothing touched.

/// Writes `data` to `url` by the rule above; errors are `PathError`s naming `url`. `durable: false`
/// skips the fsyncs, for a bulk writer of many small files that makes them durable at once before it
/// records them as complete (the Shapes generator syncs before its manifest).
public func writeAtomically(_ data: Data, to url: URL, durable: Bool = true) throws {
    let path = url.path
    switch try OutputTarget(path) {
    case .new(let target): try replaceFile(target, with: data, mode: nil, durable: durable, name: path)
    case .regular(let target, let mode): try replaceFile(target, with: data, mode: mode, durable: durable, name: path)
    case .stream: try writeThrough(path, data)
    case .descriptor(let fd):
        fflush(nil)   // after what this process already printed there
        try writeAll(fd, data, name: path)
    }
}

/// Checks before any work that `url` can take a command's output (`flag` names it in errors): what
/// is there is a file `writeAtomically` would write, its folder exists, is writable and has space,
/// and it is not one of `inputs` (the same file through any path, symlinks and `./x` included).
public func checkOutputFile(_ url: URL, flag: String, inputs: [(flag: String, url: URL)] = []) throws {
    let target = try OutputTarget(url.path, flag: flag)
    if let existing = fileIdentity(url.path) {
        for input in inputs where fileIdentity(input.url.path) == existing {
            throw PathError("\(flag) \(url.path)", "is the same file as \(input.flag) \(input.url.path); "
                + "refusing to overwrite an input")
        }
    }
    switch target {
    case .new(let file), .regular(let file, _):
        try checkWritableFolder((file as NSString).deletingLastPathComponent, flag: flag, file: url.path)
    case .stream, .descriptor: break
    }
}

/// Creates `url` (and its parents) as a command's output folder, or checks the existing one, before any
/// work: `--out-dir runs: is a file, not a folder`, `... the file system is read-only`, `... no space
/// left`. With `file`, `url` is that output file's folder and errors name the file (`--report r.md: its
/// folder x is a file, not a folder`).
public func prepareOutputFolder(_ url: URL, flag: String, of file: URL? = nil) throws {
    let path = url.path
    let subject = "\(flag) \(file?.path ?? path)", its = file == nil ? "" : "its folder \(path) "
    var isFolder: ObjCBool = false
    if FileManager.default.fileExists(atPath: path, isDirectory: &isFolder), !isFolder.boolValue {
        throw PathError(subject, its + "is a file, not a folder")
    }
    do {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    } catch {
        throw PathError(subject, its + "cannot be created (\(describeCause(error)))")
    }
    try checkWritableFolder(path, flag: flag, file: file?.path ?? path)
}

/// The temporary `writeAtomically` writes before renaming it to `name`: `.<name>.<UUID>.tmp`.
func temporaryName(for name: String) -> String { ".\(name).\(UUID().uuidString).tmp" }

/// Whether `name` is one of `writeAtomically`'s temporaries (`.<name>.<UUID>.tmp`) and nothing else.
public func isAtomicWriteTemporary(_ name: String) -> Bool {
    guard name.hasPrefix("."), name.hasSuffix(".tmp") else { return false }
    let stem = name.dropLast(4)
    guard stem.count > 38, stem.dropLast(36).hasSuffix(".") else { return false }
    return UUID(uuidString: String(stem.suffix(36))) != nil
}

/// Removes the temporaries a killed `writeAtomically` left in `folder` (only files named by its own
/// pattern; nothing else is touched) and returns their names. Call it only while no other writer can
/// be writing into `folder` (a run holding the folder's lock).
@discardableResult
public func removeStaleTemporaries(in folder: URL) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? []
    return names.filter(isAtomicWriteTemporary).sorted().filter { name in
        let path = folder.appendingPathComponent(name).path
        var st = stat()
        guard lstat(path, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { return false }
        return unlink(path) == 0
    }
}

// MARK: - What is at an output path

private enum OutputTarget {
    /// Nothing yet: create `path` (a dangling symlink's target, resolved).
    case new(String)
    /// A regular file (resolved through symlinks) and its permission bits.
    case regular(String, mode_t)
    /// A character device or FIFO, written in place.
    case stream
    /// One of this process's open descriptors, named by path.
    case descriptor(Int32)

    /// Classifies `path`; refuses folders, block devices and sockets. `flag` prefixes error names.
    init(_ path: String, flag: String? = nil) throws {
        let name = flag.map { "\($0) \(path)" } ?? path
        if let fd = openDescriptor(named: path) {
            guard fcntl(fd, F_GETFD) != -1 else { throw PathError(name, "names a descriptor that is not open") }
            self = .descriptor(fd)
            return
        }
        var st = stat()
        if stat(path, &st) == 0 {   // follows symlinks
            switch st.st_mode & S_IFMT {
            case S_IFREG:
                guard let real = realpath(path, nil) else { throw PathError(name, posixCause(errno)) }
                defer { free(real) }
                self = .regular(String(cString: real), st.st_mode & 0o7777)
            case S_IFDIR: throw PathError(name, "is a folder, not a file")
            case S_IFCHR, S_IFIFO: self = .stream
            default: throw PathError(name, "is not a regular file; refusing to replace it")
            }
            return
        }
        guard errno == ENOENT else { throw PathError(name, posixCause(errno)) }
        self = .new(try danglingTarget(path, name: name))
    }
}

/// The descriptor `path` names: /dev/stdout 1, /dev/stderr 2, /dev/fd/N or /proc/self/fd/N N.
private func openDescriptor(named path: String) -> Int32? {
    switch path {
    case "/dev/stdin": return 0
    case "/dev/stdout": return 1
    case "/dev/stderr": return 2
    default:
        for prefix in ["/dev/fd/", "/proc/self/fd/"] where path.hasPrefix(prefix) {
            return Int32(path.dropFirst(prefix.count))
        }
        return nil
    }
}

/// Where a missing `path` will be created: itself, or the end of its chain of (dangling) symlinks.
private func danglingTarget(_ path: String, name: String) throws -> String {
    var current = path
    for _ in 0..<40 {
        var st = stat()
        guard lstat(current, &st) == 0, st.st_mode & S_IFMT == S_IFLNK else { return current }
        guard let link = try? FileManager.default.destinationOfSymbolicLink(atPath: current) else { return current }
        current = link.hasPrefix("/") ? link
            : ((current as NSString).deletingLastPathComponent as NSString).appendingPathComponent(link)
    }
    throw PathError(name, "is a chain of too many symbolic links")
}

/// Device and inode of the file at `path` (following symlinks), nil when there is none.
private func fileIdentity(_ path: String) -> [UInt64]? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return [UInt64(st.st_dev), UInt64(st.st_ino)]
}

/// Refuses a `folder` that is missing, not a folder, read-only or full.
private func checkWritableFolder(_ folder: String, flag: String, file: String) throws {
    let dir = folder.isEmpty ? "." : folder
    var st = stat()
    guard stat(dir, &st) == 0 else {
        throw PathError("\(flag) \(file)", errno == ENOENT ? "is in a folder that does not exist (\(dir))"
                                                             : "cannot be written (\(posixCause(errno)))")
    }
    guard st.st_mode & S_IFMT == S_IFDIR else { throw PathError("\(flag) \(file)", "is inside \(dir), which is a file, not a folder") }
    // A real file made and removed again, since permissions, read-only mounts and pseudo file systems
    // (/proc, /sys) all show only then. Named as the writer's temporaries, so a crash leaves nothing new.
    let probe = (dir as NSString).appendingPathComponent(temporaryName(for: "write-check"))
    let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw PathError("\(flag) \(file)", "cannot be written (\(posixCause(errno)))") }
    close(fd)
    unlink(probe)
    var fs = statvfs()
    if statvfs(dir, &fs) == 0, fs.f_blocks > 0, fs.f_bavail == 0 {
        throw PathError("\(flag) \(file)", "cannot be written: no space left on the device")
    }
}

// MARK: - Writing

/// Writes `data` to a fresh temporary beside `target`, fsyncs it and renames it over `target`.
private func replaceFile(_ target: String, with data: Data, mode: mode_t?, durable: Bool, name: String) throws {
    let folder = (target as NSString).deletingLastPathComponent
    let temp = (folder as NSString).appendingPathComponent(temporaryName(for: (target as NSString).lastPathComponent))
    let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
    guard fd >= 0 else {
        throw PathError(name, "cannot write into the folder \(folder.isEmpty ? "." : folder) (\(posixCause(errno)))")
    }
    do {
        if let mode { fchmod(fd, mode) }
        try writeAll(fd, data, name: name)
        guard !durable || fsync(fd) == 0 else { throw PathError(name, "cannot be written (\(posixCause(errno)))") }
        guard close(fd) == 0 else { throw PathError(name, "cannot be written (\(posixCause(errno)))") }
    } catch {
        close(fd)
        unlink(temp)
        throw error
    }
    // rename(2) replaces the target atomically, which FileManager.moveItem does not.
    guard rename(temp, target) == 0 else {
        let cause = posixCause(errno)
        unlink(temp)
        throw PathError(name, "cannot move the finished file into place (\(cause))")
    }
    // The rename is durable once the folder's entry is on disk too.
    guard durable else { return }
    let dirFD = open(folder.isEmpty ? "." : folder, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if dirFD >= 0 { fsync(dirFD); close(dirFD) }
}

/// Writes `data` into the character device or FIFO at `path` (opened without creating or truncating).
private func writeThrough(_ path: String, _ data: Data) throws {
    let fd = open(path, O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { throw PathError(path, "cannot be written (\(posixCause(errno)))") }
    defer { close(fd) }
    try writeAll(fd, data, name: path)
}

private func writeAll(_ fd: Int32, _ data: Data, name: String) throws {
    try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
        var done = 0
        while done < raw.count {
            let n = write(fd, raw.baseAddress! + done, raw.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw PathError(name, "cannot be written (\(posixCause(errno)))")
            }
            done += n
        }
    }
}
