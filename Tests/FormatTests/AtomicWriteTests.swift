import Foundation
import XCTest
@testable import MAEFormats
import MAEJSON

/// The one atomic writer's rule for what is at the path, its output-path checks, and its error words.
final class AtomicWriteTests: XCTestCase {
    var dir: URL!

    override func setUpWithError() throws { dir = try makeTempFolder() }
    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: dir) }

    func file(_ name: String) -> URL { dir.appendingPathComponent(name) }
    func names() throws -> [String] { try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() }
    func mode(_ url: URL) -> mode_t {
        var st = stat()
        XCTAssertEqual(lstat(url.path, &st), 0)
        return st.st_mode
    }

    func testNewFileAndReplacedRegularFileLeaveNoTemporary() throws {
        let out = file("a.bin")
        try writeAtomically(Data("one".utf8), to: out)
        XCTAssertEqual(try Data(contentsOf: out), Data("one".utf8))
        chmod(out.path, 0o600)
        try writeAtomically(Data("two, longer".utf8), to: out)
        XCTAssertEqual(try Data(contentsOf: out), Data("two, longer".utf8))
        XCTAssertEqual(mode(out) & 0o777, 0o600, "a replaced file keeps its mode")
        XCTAssertEqual(try names(), ["a.bin"])
    }

    func testSymlinkTargetIsWrittenAndTheLinkStays() throws {
        let target = file("target.json"), link = file("link.json")
        try Data("old".utf8).write(to: target)
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: "target.json")
        try writeAtomically(Data("new".utf8), to: link)
        XCTAssertEqual(mode(link) & S_IFMT, S_IFLNK)
        XCTAssertEqual(try Data(contentsOf: target), Data("new".utf8))
        // A dangling link: its target is created.
        let dangling = file("dangling")
        try FileManager.default.createSymbolicLink(atPath: dangling.path, withDestinationPath: "made-by-write")
        try writeAtomically(Data("x".utf8), to: dangling)
        XCTAssertEqual(mode(dangling) & S_IFMT, S_IFLNK)
        XCTAssertEqual(try Data(contentsOf: file("made-by-write")), Data("x".utf8))
        XCTAssertEqual(try names(), ["dangling", "link.json", "made-by-write", "target.json"])
    }

    func testFIFOIsWrittenThroughNotReplaced() throws {
        let fifo = file("pipe")
        XCTAssertEqual(mkfifo(fifo.path, 0o600), 0)
        let payload = Data((0..<100_000).map { UInt8($0 % 251) })
        let reader = FIFOReader(path: fifo.path)
        try writeAtomically(payload, to: fifo)
        XCTAssertEqual(reader.wait(), payload)
        XCTAssertEqual(mode(fifo) & S_IFMT, S_IFIFO, "the FIFO is still a FIFO")
        XCTAssertEqual(try names(), ["pipe"])
    }

    /// `/proc/self/fd/N` (as `/dev/stdout`) writes to this process's descriptor N itself.
    func testDescriptorPathWritesToTheDescriptor() throws {
        let pipe = Pipe()
        let fd = pipe.fileHandleForWriting.fileDescriptor
        try writeAtomically(Data("to the pipe".utf8), to: URL(fileURLWithPath: "/proc/self/fd/\(fd)"))
        try pipe.fileHandleForWriting.close()
        XCTAssertEqual(pipe.fileHandleForReading.readDataToEndOfFile(), Data("to the pipe".utf8))
    }

    func testFolderIsRefused() throws {
        let sub = file("sub")
        try FileManager.default.createDirectory(at: sub, withIntermediateDirectories: true)
        assertFormatError(sub.path, "is a folder, not a file") { try writeAtomically(Data(), to: sub) }
        assertFormatError("--out \(sub.path)", "is a folder, not a file") { try checkOutputFile(sub, flag: "--out") }
    }

    /// A write that fails half-way (here the file-size limit, which stops root too) removes its
    /// temporary and leaves the old file intact.
    func testFailedWriteRemovesTemporaryAndKeepsOldFile() throws {
        let out = file("big.bin")
        try Data("old".utf8).write(to: out)
        var saved = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved)
        var small = saved
        small.rlim_cur = 4096
        let oldHandler = signal(SIGXFSZ, SIG_IGN)
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &small), 0)
        defer {
            setrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved)
            signal(SIGXFSZ, oldHandler)
        }
        assertFormatError(out.path, "cannot be written") { try writeAtomically(Data(count: 100_000), to: out) }
        XCTAssertEqual(try names(), ["big.bin"], "no temporary is left")
        XCTAssertEqual(try Data(contentsOf: out), Data("old".utf8))
    }

    func testParentThatIsAFileIsRefusedUpFront() throws {
        let plain = file("plain")
        try Data().write(to: plain)
        let inside = plain.appendingPathComponent("out.safetensors")
        assertFormatError("--out \(inside.path)", "a part of the path is a file, not a folder") {
            try checkOutputFile(inside, flag: "--out")
        }
        assertFormatError(inside.path, "a part of the path is a file") { try writeAtomically(Data(), to: inside) }
        assertFormatError("--out-dir \(plain.path)", "is a file, not a folder") {
            try prepareOutputFolder(plain, flag: "--out-dir")
        }
    }

    func testOutputEqualToAnInputIsRefusedThroughAnyPath() throws {
        let checkpoint = file("model.safetensors")
        try Data("weights".utf8).write(to: checkpoint)
        try FileManager.default.createSymbolicLink(atPath: file("alias").path, withDestinationPath: "model.safetensors")
        let dotted = URL(fileURLWithPath: dir.path + "/./model.safetensors")
        for out in [checkpoint, file("alias"), dotted] {
            assertFormatError("--out \(out.path)", "is the same file as --checkpoint \(checkpoint.path)") {
                try checkOutputFile(out, flag: "--out", inputs: [("--data", dir), ("--checkpoint", checkpoint)])
            }
        }
        XCTAssertEqual(try Data(contentsOf: checkpoint), Data("weights".utf8))
        try checkOutputFile(file("features.safetensors"), flag: "--out", inputs: [("--checkpoint", checkpoint)])
    }

    func testStaleTemporariesOfTheWriterOnlyAreRemoved() throws {
        let stale = ".checkpoint.safetensors.\(UUID().uuidString).tmp"
        let keep = [".notes.tmp", "x.\(UUID().uuidString).tmp", ".a.not-a-uuid.tmp", "checkpoint.safetensors"]
        for name in keep + [stale] { try Data("x".utf8).write(to: file(name)) }
        XCTAssertTrue(isAtomicWriteTemporary(temporaryName(for: "metrics.json")))
        XCTAssertEqual(removeStaleTemporaries(in: dir), [stale])
        XCTAssertEqual(try names(), keep.sorted())
    }

    func testFoundationErrorsBecomePlainWords() {
        let readOnly = CocoaError(.fileWriteVolumeReadOnly, userInfo: [NSFilePathErrorKey: "/mnt/ro/runs"])
        XCTAssertEqual(describe(readOnly), "/mnt/ro/runs: the file system is read-only.")
        let exists = CocoaError(.fileWriteFileExists, userInfo: [NSFilePathErrorKey: "runs"])
        XCTAssertEqual(describe(exists), "runs: a file of that name is already there.")
        let unknown = NSError(domain: NSCocoaErrorDomain, code: 512, userInfo: [
            NSFilePathErrorKey: "runs/x", NSUnderlyingErrorKey: NSError(domain: NSPOSIXErrorDomain, code: Int(ENOTDIR))])
        XCTAssertEqual(describe(unknown), "runs/x: a part of the path is a file, not a folder.")
        struct Row: Encodable { var loss: Double }
        XCTAssertThrowsError(try JSONEncoder().encode([Row(loss: .nan)])) { error in
            let text = describe(error)
            XCTAssertTrue(text.contains("loss is nan"), text)
            XCTAssertFalse(text.contains("EncodingError"), text)
        }
        XCTAssertEqual(describe(PathError("a.bin", "is empty")), "a.bin: is empty.")
        // mkdir -p through a file: Foundation's error 512 names no cause; the file is named instead.
        let plain = file("plain")
        FileManager.default.createFile(atPath: plain.path, contents: Data())
        XCTAssertThrowsError(try FileManager.default.createDirectory(at: plain.appendingPathComponent("a/b"),
                                                                     withIntermediateDirectories: true)) { error in
            XCTAssertTrue(describe(error).contains("\(plain.path) is a file, not a folder"), describe(error))
            XCTAssertFalse(describe(error).contains("NSCocoaErrorDomain"), describe(error))
        }
    }
}

/// Reads a FIFO to its end on another thread (opening it blocks until the writer opens it too).
final class FIFOReader: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)

    init(path: String) {
        Thread.detachNewThread { [self] in
            if let handle = FileHandle(forReadingAtPath: path) { data = handle.readDataToEndOfFile() }
            done.signal()
        }
    }

    func wait() -> Data {
        done.wait()
        return data
    }
}
