import XCTest
import MAEKernels
import TestSupport

/// The built `mae-eval` binary as a user meets it: exit status and the one-sentence error.
final class CommandLineTests: XCTestCase {
    /// Runs mae-eval (built beside the test bundle by `swift test`) and returns (status, stdout, stderr).
    func run(_ arguments: [String]) throws -> (Int32, String, String) {
        let folder = try XCTUnwrap(Bundle.main.executableURL).deletingLastPathComponent()
        let binary = folder.appendingPathComponent("mae-eval")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("mae-eval is not built beside the tests in \(folder.path)")
        }
        let p = Process()
        p.executableURL = binary
        p.arguments = arguments
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
    }

    func assertOneSentenceFailure(_ arguments: [String], mentions: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let (status, _, err) = try run(arguments)
        XCTAssertNotEqual(status, 0, "exit status", file: file, line: line)
        let lines = err.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, "one line on stderr, got: \(err)", file: file, line: line)
        XCTAssertTrue(err.contains(mentions), "stderr should mention \(mentions): \(err)", file: file, line: line)
        XCTAssertFalse(err.contains("Fatal error") || err.contains("Stack dump"), "no crash", file: file, line: line)
    }

    func temporaryFile(_ bytes: [UInt8], _ name: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(UUID())-\(name)")
        try Data(bytes).write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func testInfoDescribesTheFixture() throws {
        let (status, out, _) = try run(["info", fixtureURL("mae_tiny.safetensors").path])
        XCTAssertEqual(status, 0)
        XCTAssertTrue(out.contains("safetensors"), out)
        XCTAssertTrue(out.lowercased().contains("decoder"), out)
    }

    func testBadCheckpointsGetOneSentence() throws {
        let real = try Data(contentsOf: fixtureURL("mae_tiny.pth"))
        var random = RandomStream(seed: 9)
        let cases: [(URL, String)] = [
            (try temporaryFile([], "empty.safetensors"), "empty.safetensors"),
            (try temporaryFile(Array(real.prefix(real.count / 2)), "truncated.pth"), "truncated.pth"),
            (try temporaryFile((0..<4096).map { _ in UInt8(truncatingIfNeeded: random.next()) }, "noise.pth"), "noise.pth"),
            (try temporaryFile([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F] + Array("{}".utf8), "huge.safetensors"), "huge.safetensors"),
            (URL(fileURLWithPath: "/nonexistent/x.pth"), "/nonexistent/x.pth"),
        ]
        for (url, name) in cases {
            try assertOneSentenceFailure(["info", url.path], mentions: name)
        }
    }

    func testBenchRefusesBadShapesAndPresets() throws {
        try assertOneSentenceFailure(["bench", "--model", "vit_gigantic", "--iters", "1"], mentions: "vit_gigantic")
        try assertOneSentenceFailure(["bench", "--model", "vit_tiny_patch16", "--img-size", "225", "--iters", "1"],
                                     mentions: "divisible")
        try assertOneSentenceFailure(["bench", "--mode", "sideways"], mentions: "--mode")
    }

    func testBenchPrintsOneJSONLine() throws {
        let (status, out, _) = try run(["bench", "--model", "vit_shapes_patch4", "--img-size", "32", "--batch-size", "2",
                                        "--mode", "pretrain", "--iters", "1"])
        XCTAssertEqual(status, 0)
        let json = try JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any]
        for key in ["img_per_s", "model", "mode", "batch_size", "threads"] { XCTAssertNotNil(json?[key], key) }
    }
}
