// MAEFormats: checkpoint and tensor file formats (safetensors, PyTorch zip checkpoints), key layouts.
import Foundation

/// A file that cannot be read or written as asked. Its description is one sentence naming the file.
public struct FormatError: Error, LocalizedError, CustomStringConvertible, Sendable {
    /// The file (or other source) the problem is in.
    public var source: String
    /// What is wrong, as a sentence fragment without a trailing period.
    public var reason: String

    public init(_ source: String, _ reason: String) {
        self.source = source
        self.reason = reason
    }

    /// A reason that is already a sentence (a wrapped error's description) gets no second period.
    public var description: String { "\(source): \(reason)" + (reason.hasSuffix(".") ? "" : ".") }
    public var errorDescription: String? { description }
}
