import Foundation

/// A problem with one file, folder or image: the path it is about and what is wrong there. Its
/// description is one sentence, "<path>: <reason>.", for standard error. The one error type of the
/// file formats, the COCO files, the metrics and the data layer (each had its own copy).
public struct PathError: Error, LocalizedError, CustomStringConvertible, Sendable, Equatable {
    /// The file, folder or image the problem is in (or a flag and its path: "--out x.md").
    public var path: String
    /// What is wrong, as the end of a sentence without the path ("is truncated", "has no images").
    public var reason: String
    /// Whether the description ends with a period. The data layer's messages never had one, and
    /// keep their text; a reason that is already a sentence gets no second period.
    public var period: Bool

    public init(_ path: String, _ reason: String, period: Bool = true) {
        self.path = path
        self.reason = reason
        self.period = period
    }

    public init(_ url: URL, _ reason: String, period: Bool = true) {
        self.init(url.path, reason, period: period)
    }

    public var description: String { "\(path): \(reason)" + (period && !reason.hasSuffix(".") ? "." : "") }
    public var errorDescription: String? { description }
}
