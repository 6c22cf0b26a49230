import Foundation
import XCTest

/// The repository's root folder (tests read its `Tasks/` and `Checkpoints/`): three levels above
/// this file, `Tests/TestSupport/TestFolders.swift`.
public let repositoryRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent()

extension XCTestCase {
    /// A new empty folder under the system's temporary folder, removed when the test ends.
    public func scratchFolder(prefix: String = "mae-eval-test") throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID())").standardizedFileURL
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }
}
