import Foundation

/// A data-layer failure: every case names the file (or folder) it is about, and its description
/// is one sentence a user can act on.
public struct DataError: Error, LocalizedError, CustomStringConvertible, Sendable {
    /// The file or folder the error is about.
    public let path: String
    /// What went wrong, as the end of a sentence ("is truncated", "has no images").
    public let problem: String

    public init(_ url: URL, _ problem: String) {
        self.path = url.path
        self.problem = problem
    }

    public init(path: String, _ problem: String) {
        self.path = path
        self.problem = problem
    }

    public var description: String { "\(path): \(problem)" }
    public var errorDescription: String? { description }
}
