import Foundation

// The one place where Foundation, POSIX and Codable errors become plain words, so no
// `Error Domain=NSCocoaErrorDomain Code=642 ...`, `NSCocoaErrorDomain error 512` or
// `EncodingError.invalidValue` text reaches a user.

/// `error` as one sentence for standard error: the project's own errors as they describe themselves,
/// Foundation/POSIX file errors as "<path>: <plain cause>.", Codable errors as what was wrong where.
public func describe(_ error: Error) -> String {
    describeSystemError(error) ?? (error as? LocalizedError)?.errorDescription ?? String(describing: error)
}

/// A Foundation, POSIX or Codable `error` as one plain sentence; nil for any other error (the
/// project's own, or ArgumentParser's), which describes itself.
public func describeSystemError(_ error: Error) -> String? {
    if let path = foundationErrorPath(error) { return "\(path): \(describeCause(error))." }
    guard isFoundationError(error) || error is EncodingError || error is DecodingError else { return nil }
    let cause = describeCause(error)
    return cause.prefix(1).uppercased() + cause.dropFirst() + "."
}

/// The cause of `error` as a lower-case fragment without the path ("no space left on the device"),
/// for sentences that name the file themselves.
public func describeCause(_ error: Error) -> String {
    switch error {
    case EncodingError.invalidValue(let value, let context):
        let field = codingPathText(context.codingPath)
        if let d = value as? Double, !d.isFinite { return "\(field) is \(d), which JSON cannot hold" }
        if let f = value as? Float, !f.isFinite { return "\(field) is \(f), which JSON cannot hold" }
        return "\(field) cannot be encoded"
    case let error as DecodingError:
        switch error {
        case .keyNotFound(let key, let context):
            return "\(codingPathText(context.codingPath + [key])) is missing"
        case .typeMismatch(_, let context), .valueNotFound(_, let context):
            return "\(codingPathText(context.codingPath)) has the wrong type"
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "is not valid JSON" : "\(codingPathText(context.codingPath)) is not valid"
        @unknown default: return "cannot be decoded"
        }
    default: break
    }
    guard isFoundationError(error) else {
        return (error as? LocalizedError)?.errorDescription ?? String(describing: error)
    }
    let ns = error as NSError
    if let underlying = ns.userInfo[NSUnderlyingErrorKey] as? NSError, underlying.domain == NSPOSIXErrorDomain {
        return posixCause(Int32(underlying.code))
    }
    if ns.domain == NSPOSIXErrorDomain { return posixCause(Int32(ns.code)) }
    // Foundation reports a file where a folder should be (mkdir -p through a file) as error 512
    // without a POSIX cause: name that file.
    if ns.code == CocoaError.fileWriteUnknown.rawValue, let path = foundationErrorPath(error),
       let file = fileInsteadOfFolder(on: path) {
        return "\(file) is a file, not a folder"
    }
    switch CocoaError.Code(rawValue: ns.code) {
    case .fileNoSuchFile, .fileReadNoSuchFile: return "no such file or folder"
    case .fileReadNoPermission, .fileWriteNoPermission: return "permission denied"
    case .fileWriteFileExists: return "a file of that name is already there"
    case .fileWriteOutOfSpace: return "no space left on the device"
    case .fileWriteVolumeReadOnly: return "the file system is read-only"
    case .fileReadInapplicableStringEncoding: return "is not UTF-8 text"
    case .fileReadCorruptFile: return "is not in the expected format"
    case .fileReadTooLarge: return "is too large to read"
    case .fileWriteInvalidFileName: return "is not a valid file name"
    case .fileWriteUnknown: return "cannot be written"
    case .fileReadUnknown: return "cannot be read"
    default: return "the file operation failed"
    }
}

/// A POSIX error number as a plain lower-case cause.
public func posixCause(_ code: Int32) -> String {
    switch code {
    case ENOSPC, EDQUOT: return "no space left on the device"
    case EROFS: return "the file system is read-only"
    case EACCES, EPERM: return "permission denied"
    case ENOENT: return "no such file or folder"
    case ENOTDIR: return "a part of the path is a file, not a folder"
    case EISDIR: return "it is a folder"
    case EFBIG: return "the file is larger than this process may write"
    case EEXIST: return "a file of that name is already there"
    case ELOOP: return "too many levels of symbolic links"
    case ENAMETOOLONG: return "the name is too long"
    case EIO: return "an input/output error"
    default: return String(cString: strerror(code)).lowercased()
    }
}

private func isFoundationError(_ error: Error) -> Bool {
    let domain = (error as NSError).domain
    return domain == NSCocoaErrorDomain || domain == NSPOSIXErrorDomain
}

private func foundationErrorPath(_ error: Error) -> String? {
    guard isFoundationError(error) else { return nil }
    let info = (error as NSError).userInfo
    return info[NSFilePathErrorKey] as? String ?? (info[NSURLErrorKey] as? URL)?.path
}

/// The first proper prefix of `path` that exists and is not a folder.
private func fileInsteadOfFolder(on path: String) -> String? {
    var prefix = path.hasPrefix("/") ? "" : "."
    for part in path.split(separator: "/", omittingEmptySubsequences: true).dropLast() {
        prefix += "/" + part
        var isFolder: ObjCBool = false
        if FileManager.default.fileExists(atPath: prefix, isDirectory: &isFolder), !isFolder.boolValue { return prefix }
    }
    return nil
}

private func codingPathText(_ path: [CodingKey]) -> String {
    path.isEmpty ? "the value" : path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}
