import Foundation
import XCTest

/// The fixtures written by scripts/make_data_fixtures.py (PIL / torchvision references).
enum Fixtures {
    static var folder: URL { Bundle.module.url(forResource: "Fixtures", withExtension: nil)! }
    static func url(_ name: String) -> URL { folder.appendingPathComponent(name) }
    static func bytes(_ name: String) throws -> [UInt8] { [UInt8](try Data(contentsOf: url(name))) }
    static func int32s(_ name: String) throws -> [Int32] {
        try Data(contentsOf: url(name)).withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
    }
    static func floats(_ name: String) throws -> [Float] {
        try Data(contentsOf: url(name)).withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
    }
    static func index() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: url("index.json"))) as! [String: Any]
    }
    static func cases(_ key: String) throws -> [[String: Any]] { try index()[key] as! [[String: Any]] }
}

/// Byte-exact comparison reporting how many bytes differ, the largest difference and the first few.
func assertBytesEqual(_ actual: [UInt8], _ expected: [UInt8], maxDiff: Int = 0, _ name: String,
                      file: StaticString = #filePath, line: UInt = #line) {
    guard actual.count == expected.count else {
        XCTFail("\(name): \(actual.count) bytes, expected \(expected.count)", file: file, line: line)
        return
    }
    var worst = 0, bad: [Int] = []
    for i in 0..<actual.count {
        let d = abs(Int(actual[i]) - Int(expected[i]))
        worst = max(worst, d)
        if d > maxDiff { bad.append(i) }
    }
    if !bad.isEmpty {
        let first = bad.prefix(4).map { "[\($0)] \(actual[$0]) vs \(expected[$0])" }.joined(separator: ", ")
        XCTFail("\(name): \(bad.count)/\(actual.count) bytes differ by more than \(maxDiff) (max \(worst)); first: \(first)",
                file: file, line: line)
    }
}

/// A fresh empty temporary folder, removed at process exit is not needed: tests clean up themselves.
func temporaryFolder(_ name: String = #function) -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("mae-data-tests-\(ProcessInfo.processInfo.processIdentifier)")
        .appendingPathComponent(name.filter { $0.isLetter || $0.isNumber })
    try? FileManager.default.removeItem(at: url)
    try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}
