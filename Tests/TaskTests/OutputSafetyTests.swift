import Foundation
import MAEFormats
import MAEModels
import TestSupport
@testable import MAETasks
import XCTest

/// Outputs that never destroy anything: inputs never overwritten, output paths checked before the
/// work, run folders locked while a run writes, stale temporaries removed, huge sizes refused.
final class OutputSafetyTests: XCTestCase {
    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }
    let repoRoot = repositoryRoot


    func testExtractRefusesToOverwriteItsCheckpoint() throws {
        let dir = try scratchFolder()
        let checkpoint = dir.appendingPathComponent("model.safetensors")
        try FileManager.default.copyItem(at: fixtureURL("mae_tiny.safetensors"), to: checkpoint)
        let before = try Data(contentsOf: checkpoint)
        let throughDot = URL(fileURLWithPath: dir.path + "/./model.safetensors")
        for out in [checkpoint, throughDot] {
            let o = ExtractOptions(checkpoint: checkpoint, data: fixture("imagefolder"), out: out)
            XCTAssertThrowsError(try runExtract(o)) { e in
                XCTAssertTrue("\(e)".contains("is the same file as --checkpoint"), "\(e)")
            }
        }
        // An image of --data is an input too.
        let image = try XCTUnwrap(FileManager.default.enumerator(atPath: fixture("imagefolder").path)?
            .compactMap { $0 as? String }.first { $0.hasSuffix(".png") || $0.hasSuffix(".jpg") })
        let o = ExtractOptions(checkpoint: checkpoint, data: fixture("imagefolder"),
                               out: fixture("imagefolder").appendingPathComponent(image))
        XCTAssertThrowsError(try runExtract(o)) { e in XCTAssertTrue("\(e)".contains("is the same file as --data"), "\(e)") }
        XCTAssertEqual(try Data(contentsOf: checkpoint), before)
    }

    /// `--out-dir` that is a file is refused before anything else is looked at (here: before the
    /// missing checkpoint, which would otherwise be the error).
    func testTransferOutDirIsCheckedBeforeTheWork() throws {
        let dir = try scratchFolder()
        let file = dir.appendingPathComponent("runs")
        try Data("x".utf8).write(to: file)
        var o = LinearProbeOptions()
        o.common.task = repoRoot.appendingPathComponent("Tasks/shapes-linprobe.yaml").path
        o.common.checkpoints = [URL(fileURLWithPath: "/nonexistent/backbone.safetensors")]
        o.common.outDir = file
        o.common.report = nil
        XCTAssertThrowsError(try runLinearProbe(o)) { e in
            XCTAssertEqual("\(e)", "--out-dir \(file.path): is a file, not a folder.")
        }
        o.common.outDir = dir.appendingPathComponent("fine")
        o.common.report = file.appendingPathComponent("report.md")
        XCTAssertThrowsError(try runLinearProbe(o)) { e in
            XCTAssertEqual("\(e)", "--report \(file.path)/report.md: its folder \(file.path) is a file, not a folder.")
        }
    }

    func testPretrainOutDirThatIsAFileIsOneSentence() throws {
        let dir = try scratchFolder()
        let file = dir.appendingPathComponent("pt")
        try Data().write(to: file)
        var o = PretrainOptions(method: .mae, epochs: 1, outDir: file)
        o.data = URL(fileURLWithPath: "/nonexistent/images")
        XCTAssertThrowsError(try runPretraining(o)) { e in
            XCTAssertEqual(describe(e), "--out-dir \(file.path): is a file, not a folder.")
        }
    }

    func testSecondRunIntoALockedFolderIsRefusedAndStaleTemporariesGo() throws {
        let dir = try scratchFolder().appendingPathComponent("run")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let stale = dir.appendingPathComponent(".checkpoint.safetensors.\(UUID().uuidString).tmp")
        let other = dir.appendingPathComponent("notes.tmp")
        for url in [stale, other] { try Data("x".utf8).write(to: url) }
        var first: RunFolderLock? = try RunFolderLock(dir)
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale.path), "a killed writer's temporary is removed")
        XCTAssertTrue(FileManager.default.fileExists(atPath: other.path), "nothing else is touched")
        XCTAssertThrowsError(try RunFolderLock(dir)) { e in
            XCTAssertEqual("\(e)", "\(dir.path) is in use by another mae-eval run (pid \(getpid())); " +
                           "wait for it or choose another --out-dir.")
        }
        XCTAssertNotNil(first)
        first = nil   // the run ends: its lock goes with it
        XCTAssertNoThrow(try RunFolderLock(dir))
    }

    /// A second process is refused too, and a lock held by a process that was killed is free again.
    func testLockIsHeldAcrossProcessesAndDiesWithTheHolder() throws {
        let dir = try scratchFolder()
        let lockFile = dir.appendingPathComponent(RunFolderLock.fileName).path
        let holder = Process()
        holder.executableURL = URL(fileURLWithPath: "/usr/bin/flock")
        holder.arguments = ["--exclusive", "--no-fork", lockFile, "/bin/sleep", "30"]   // no child keeps the lock
        try holder.run()
        defer { if holder.isRunning { holder.terminate() } }
        var locked = false
        for _ in 0..<100 where !locked {
            usleep(20_000)
            do { _ = try RunFolderLock(dir) } catch { locked = "\(error)".contains("is in use by another mae-eval run") }
        }
        XCTAssertTrue(locked, "the other process's lock is seen")
        kill(holder.processIdentifier, SIGKILL)
        holder.waitUntilExit()
        XCTAssertNoThrow(try RunFolderLock(dir))
    }

    func testHugeImageSizeIsRefusedBeforeAllocating() throws {
        var c = ModelPreset.shapes.config
        c.imgSize = 1000
        let model = try VisionTransformer(config: c)
        let fusedEstimate = model.peakMemoryBytes(batch: 64, training: false)
        // The materialised attention's estimate (4 TB), refused on any machine.
        model.fusedAttentionTokens = .max
        XCTAssertThrowsError(try model.checkMemory(batch: 64, training: false)) { e in
            let s = "\(e)"
            XCTAssertTrue(s.contains("image size 1000") && s.contains("62,501 tokens") && s.contains("batch size 64"), s)
            XCTAssertTrue(s.contains("--img-size") && s.contains("--batch-size"), s)
        }
        // The estimate holds at least the attention scores of one block: B * H * N^2 floats.
        let n = Double(c.numPatches + 1)
        XCTAssertGreaterThan(model.peakMemoryBytes(batch: 64, training: false), 4 * 64 * Double(c.numHeads) * n * n)
        // The fused attention (the default at 62,501 tokens) keeps B * H * N scores per block instead,
        // and the estimate still holds the two (B,N,D) residuals.
        XCTAssertLessThan(fusedEstimate, 4 * 64 * Double(c.numHeads) * n * n)
        XCTAssertGreaterThan(fusedEstimate, 4 * 2 * 64 * n * Double(c.embedDim))
        c.imgSize = 100_000
        XCTAssertThrowsError(try VisionTransformer(config: c)) { e in
            XCTAssertTrue("\(e)".contains("image size 100000") && "\(e)".contains("--img-size"), "\(e)")
        }
        // The shipped size fits.
        XCTAssertNoThrow(try VisionTransformer(config: ModelPreset.shapes.config).checkMemory(batch: 64, training: true))
    }
}
