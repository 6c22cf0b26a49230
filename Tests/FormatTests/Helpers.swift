import Foundation
import XCTest
@testable import MAEFormats
import MAEJSON

/// A fixture made by scripts/make_format_fixtures.py.
func formatFixture(_ name: String) -> URL {
    Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)!
}

/// A fresh empty folder under the system temporary directory.
func makeTempFolder() throws -> URL {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-formats-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Bit-exact equality of two float arrays (inf and signed zero included), naming the first difference.
func assertBitwiseEqual(_ a: [Float], _ b: [Float], _ name: String, file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(a.count, b.count, "\(name): count", file: file, line: line)
    for (i, (x, y)) in zip(a, b).enumerated() where x.bitPattern != y.bitPattern {
        XCTFail("\(name): element \(i) is \(x), expected \(y)", file: file, line: line)
        return
    }
}

/// Asserts that `body` throws a `PathError` whose one-sentence description names `source` and
/// contains `fragment`.
func assertFormatError<T>(_ source: String, _ fragment: String, file: StaticString = #filePath, line: UInt = #line,
                          _ body: () throws -> T) {
    do {
        _ = try body()
        XCTFail("expected an error mentioning '\(fragment)'", file: file, line: line)
    } catch let error as PathError {
        let text = error.description
        XCTAssertTrue(text.contains(source), "'\(text)' does not name \(source)", file: file, line: line)
        XCTAssertTrue(text.contains(fragment), "'\(text)' does not mention '\(fragment)'", file: file, line: line)
        XCTAssertFalse(text.contains("\n"), "'\(text)' spans several lines", file: file, line: line)
    } catch {
        XCTFail("unexpected error type \(type(of: error)): \(error)", file: file, line: line)
    }
}
