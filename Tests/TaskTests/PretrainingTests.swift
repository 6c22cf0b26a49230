import Foundation
import MAEData
import MAEFormats
import MAEModels
import MAETasks
import XCTest

/// Pretraining, resume, divergence and visualisation on a tiny Shapes set and a tiny ViT, so each
/// test runs in seconds in a debug build.
final class PretrainingTests: XCTestCase {
    /// 16 px Shapes with 64 unlabeled and 60 labeled images, generated once per test run.
    static let data: ShapesPaths = {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-pretrain-tests-shapes")
        let counts = ShapesCounts(pretrain: 64, supervised: 60, train: 0, val: 20, scenesTrain: 0, scenesVal: 0)
        return try! ShapesDataset.ensure(at: root, size: 16, seed: 3, counts: counts)
    }()
    static let tiny = ViTConfig(imgSize: 16, patchSize: 4, embedDim: 32, depth: 2, numHeads: 2)
    static let tinyDecoder = DecoderConfig(embedDim: 16, depth: 1, numHeads: 2)

    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-pretrain-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// A 3-epoch MAE run stopped after epoch 1: the options to resume it, its checkpoint and that file's bytes.
    func stoppedAfterOneEpoch(dir: String) throws -> (PretrainOptions, URL, Data) {
        var o = options(.mae, epochs: 3, dir: dir)
        o.stopAfterEpoch = 1
        _ = try runPretraining(o)
        let checkpoint = PretrainFiles(dir: o.outDir).checkpoint
        o.stopAfterEpoch = nil
        o.resume = true
        return (o, checkpoint, try Data(contentsOf: checkpoint))
    }

    func options(_ method: PretrainMethod, epochs: Int, dir: String) -> PretrainOptions {
        var o = PretrainOptions(method: method, epochs: epochs, outDir: scratch.appendingPathComponent(dir))
        o.architecture = Self.tiny
        o.decoder = Self.tinyDecoder
        o.data = method == .mae ? Self.data.pretrain : Self.data.supervised
        o.batchSize = 16
        o.lr = 2e-3
        o.warmupEpochs = 1
        o.seed = 7
        o.progress = false
        return o
    }

    func testMAELossFalls() throws {
        let result = try runPretraining(options(.mae, epochs: 6, dir: "mae"))
        let losses = result.log.map(\.loss)
        XCTAssertEqual(result.log.map(\.epoch), Array(1...6))
        XCTAssertLessThan(losses.last!, 0.9 * losses.first!, "losses \(losses)")
        let files = PretrainFiles(dir: result.outDir)
        for url in [files.log, files.metrics, files.checkpoint, files.backbone, files.lossPlot] {
            XCTAssertTrue(FileManager.default.fileExists(atPath: url.path), url.lastPathComponent)
        }
        // The backbone keeps its decoder and says how it was made.
        let loaded = try loadVisionTransformer(from: files.backbone, options: LoadOptions(keepDecoder: true))
        XCTAssertEqual(loaded.metadata["method"], "mae")
        XCTAssertEqual(loaded.metadata["epochs"], "6")
        XCTAssertNotNil(loaded.model.config.decoder)
    }

    func testSupervisedLossFalls() throws {
        var o = options(.supervised, epochs: 6, dir: "sup")
        o.dropPath = 0
        let result = try runPretraining(o)
        let losses = result.log.map(\.loss)
        XCTAssertLessThan(losses.last!, losses.first!, "losses \(losses)")
        let loaded = try loadVisionTransformer(from: PretrainFiles(dir: result.outDir).backbone,
                                               options: LoadOptions(keepHead: true))
        XCTAssertEqual(loaded.model.config.numClasses, 10)
        XCTAssertEqual(loaded.metadata["method"], "supervised")
    }

    /// A run stopped after epoch 2 and resumed ends bit-identical to an unbroken 4-epoch run.
    func testResumeMatchesUnbrokenRun() throws {
        let unbroken = try runPretraining(options(.mae, epochs: 4, dir: "a"))
        var first = options(.mae, epochs: 4, dir: "b")
        first.stopAfterEpoch = 2
        let stopped = try runPretraining(first)
        XCTAssertEqual(stopped.log.map(\.epoch), [1, 2])
        XCTAssertNil(stopped.metrics)
        var second = options(.mae, epochs: 4, dir: "b")
        second.resume = true
        let resumed = try runPretraining(second)
        XCTAssertEqual(resumed.log.map(\.epoch), [1, 2, 3, 4])
        XCTAssertEqual(resumed.log.map(\.loss), unbroken.log.map(\.loss))
        XCTAssertEqual(resumed.log.map(\.lr), unbroken.log.map(\.lr))
        let a = try SafeTensors.read(contentsOf: PretrainFiles(dir: unbroken.outDir).checkpoint)
        let b = try SafeTensors.read(contentsOf: PretrainFiles(dir: resumed.outDir).checkpoint)
        XCTAssertEqual(a.order, b.order)
        XCTAssertTrue(a.order.contains("optim.exp_avg"))
        for name in a.order { XCTAssertEqual(a.tensors[name]!.bytes, b.tensors[name]!.bytes, name) }
        // Whole files byte-identical too: sorted metadata JSON, no time stamp in the weights.
        for pick in [\PretrainFiles.checkpoint, \PretrainFiles.backbone] {
            XCTAssertEqual(try Data(contentsOf: PretrainFiles(dir: unbroken.outDir)[keyPath: pick]),
                           try Data(contentsOf: PretrainFiles(dir: resumed.outDir)[keyPath: pick]))
        }
        // The file on disk has epochs 1...4 once each.
        let lines = try String(contentsOf: PretrainFiles(dir: resumed.outDir).log, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 4)
    }

    /// The check: 2 epochs, then `--epochs 4 --resume` in the same folder.
    func testExtendFinishedRun() throws {
        _ = try runPretraining(options(.mae, epochs: 2, dir: "c"))
        var more = options(.mae, epochs: 4, dir: "c")
        more.resume = true
        let result = try runPretraining(more)
        XCTAssertEqual(result.log.map(\.epoch), [1, 2, 3, 4])
        XCTAssertLessThan(result.log.last!.loss, result.log.first!.loss)
        XCTAssertEqual(result.metrics?.epochs, 4)
    }

    func testExistingRunNeedsResume() throws {
        var o = options(.mae, epochs: 1, dir: "d")
        _ = try runPretraining(o)
        XCTAssertThrowsError(try runPretraining(o)) { error in
            XCTAssertTrue("\(error)".contains("--resume"), "\(error)")
        }
        o.resume = true
        o.seed = 8
        XCTAssertThrowsError(try runPretraining(o)) { error in
            XCTAssertTrue("\(error)".hasPrefix("Cannot resume"), "\(error)")
        }
    }

    /// A resume with another recipe is refused naming the flag; the checkpoint is left alone.
    func testResumeWithAnotherRecipeIsRefusedNamingTheFlag() throws {
        let (o, checkpoint, before) = try stoppedAfterOneEpoch(dir: "r")
        let changes: [(WritableKeyPath<PretrainOptions, Double?>, Double, String)] = [
            (\.lr, 1e-2, "--lr is 0.01 but the run being resumed used 0.002"),
            (\.weightDecay, 0.5, "--weight-decay is 0.5 but the run being resumed used 0.05"),
            (\.minCropScale, 0.9, "--min-crop-scale is 0.9 but the run being resumed used 0.2"),
        ]
        for (key, value, fragment) in changes {
            var changed = o
            changed[keyPath: key] = value
            XCTAssertThrowsError(try runPretraining(changed)) { XCTAssertTrue("\($0)".contains(fragment), "\($0)") }
        }
        var longer = o
        longer.epochs = 4
        XCTAssertThrowsError(try runPretraining(longer)) {
            XCTAssertTrue("\($0)".contains("--epochs is 4 but the run being resumed used 3"), "\($0)")
        }
        XCTAssertEqual(try Data(contentsOf: checkpoint), before)
        // The same recipe resumes.
        XCTAssertEqual(try runPretraining(o).log.map(\.epoch), [1, 2, 3])
        // A finished run has nothing left at its own or a smaller --epochs.
        var shorter = o
        shorter.epochs = 2
        XCTAssertThrowsError(try runPretraining(shorter)) {
            XCTAssertTrue("\($0)".contains("has already completed 3 of its 3 epochs, so --epochs 2 leaves nothing to do"), "\($0)")
        }
        XCTAssertThrowsError(try runPretraining(o)) { XCTAssertTrue("\($0)".contains("--epochs 3 leaves nothing to do"), "\($0)") }
    }

    /// config.yaml holds the resolved recipe under flag names, identical for identical runs.
    func testConfigYAMLRecordsTheResolvedRecipe() throws {
        let a = try runPretraining(options(.mae, epochs: 1, dir: "ca"))
        let b = try runPretraining(options(.mae, epochs: 1, dir: "cb"))
        let text = try String(contentsOf: a.outDir.appendingPathComponent("config.yaml"), encoding: .utf8)
        for line in ["command: pretrain", "--lr: 0.002", "--min-crop-scale: 0.2", "--seed: 7", "--warmup-epochs: 1", "--batch-size: 16"] {
            XCTAssertTrue(text.contains(line), "config.yaml lacks '\(line)':\n\(text)")
        }
        let other = try String(contentsOf: b.outDir.appendingPathComponent("config.yaml"), encoding: .utf8)
        XCTAssertEqual(text.replacingOccurrences(of: "/ca", with: "/cb"), other)
    }

    /// `--resume` with nothing to resume starts a new run (and says so on standard error).
    func testResumeWithNothingToResumeStartsFresh() throws {
        var o = options(.mae, epochs: 1, dir: "f")
        o.resume = true
        XCTAssertEqual(try runPretraining(o).log.map(\.epoch), [1])
    }

    /// A diverging loss stops the run with one sentence and leaves the last good checkpoint alone.
    func testDivergenceStopsAndKeepsCheckpoint() throws {
        let (stopped, checkpoint, before) = try stoppedAfterOneEpoch(dir: "e")
        var o = stopped
        // A changed lr would be refused as another recipe: a loss limit no step can meet stands in for divergence.
        o.lossLimit = 1e-6
        XCTAssertThrowsError(try runPretraining(o)) { error in
            let text = "\(error)"
            XCTAssertTrue(text.hasPrefix("Training stopped at epoch 2, step "), text)
            XCTAssertTrue(text.contains("so training diverged; lower --blr"), text)
            XCTAssertTrue(text.contains("(epoch 1) is kept"), text)
            XCTAssertTrue(text.hasSuffix(".") && !text.hasSuffix("..") && !text.contains("\n"), text)
        }
        XCTAssertEqual(try Data(contentsOf: checkpoint), before)
        let lines = try String(contentsOf: PretrainFiles(dir: o.outDir).log, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 1)
    }

    func testVisualizeWritesGrid() throws {
        var config = Self.tiny
        config.decoder = Self.tinyDecoder
        let model = try VisionTransformer(config: config)
        model.initializeWeights(seed: 1)
        let checkpoint = scratch.appendingPathComponent("mae.safetensors")
        try model.save(to: checkpoint, metadata: ["method": "mae"])
        var o = VisualizeOptions(out: scratch.appendingPathComponent("grid.png"))
        o.checkpoint = checkpoint
        o.data = Self.data.val
        o.count = 3
        let size = try runVisualize(o)
        // 16 px cells scaled 6x to 96, 4 px gaps, a 16 px title row.
        XCTAssertEqual(size.width, 4 * 96 + 5 * 4)
        XCTAssertEqual(size.height, 16 + 3 * 96 + 4 * 4)
        let grid = try ImageCodec.decode(contentsOf: o.out)
        XCTAssertEqual(grid.width, size.width)
        XCTAssertEqual(grid.height, size.height)
        // Row 0's first cell is the first val image scaled up; its last cell shows the same pixels
        // wherever a patch stayed visible.
        let folder = try ImageFolder(root: Self.data.val)
        let first = try ImageCodec.decode(contentsOf: folder.samples[0].url)
        func pixel(_ image: RGBImage, _ x: Int, _ y: Int) -> [UInt8] {
            Array(image.pixels[((y * image.width + x) * 3)..<((y * image.width + x) * 3 + 3)])
        }
        for (x, y) in [(0, 0), (5, 9), (15, 15)] {
            XCTAssertEqual(pixel(grid, 4 + x * 6 + 2, 20 + y * 6 + 3), pixel(first, x, y))
        }
        var visibleMatches = 0, masked = 0
        let second = 4 + 96 + 4
        for y in 0..<16 {
            for x in 0..<16 where pixel(grid, second + x * 6, 20 + y * 6) == [128, 128, 128] { masked += 1 }
        }
        for y in 0..<16 {
            for x in 0..<16 where pixel(grid, 4 + 3 * 100 + x * 6, 20 + y * 6) == pixel(first, x, y) { visibleMatches += 1 }
        }
        XCTAssertGreaterThanOrEqual(masked, 12 * 16)      // 12 of 16 patches removed
        XCTAssertGreaterThanOrEqual(visibleMatches, 4 * 16)
    }

    func testPlotRendersSeries() throws {
        let plot = LinePlot(title: "loss", xLabel: "epoch", yLabel: "loss",
                            series: [PlotSeries(name: "mae", points: [(1, 1.0), (2, 0.5), (3, 0.25)]),
                                     PlotSeries(name: "supervised", points: [(1, 2.0), (3, 1.0)])])
        let image = plot.render()
        XCTAssertEqual(image.width, 640)
        let blue = stride(from: 0, to: image.pixels.count, by: 3).filter {
            image.pixels[$0] == 31 && image.pixels[$0 + 1] == 119 && image.pixels[$0 + 2] == 180
        }.count
        let orange = stride(from: 0, to: image.pixels.count, by: 3).filter {
            image.pixels[$0] == 255 && image.pixels[$0 + 1] == 127 && image.pixels[$0 + 2] == 14
        }.count
        XCTAssertGreaterThan(blue, 300)
        XCTAssertGreaterThan(orange, 300)
    }
}
