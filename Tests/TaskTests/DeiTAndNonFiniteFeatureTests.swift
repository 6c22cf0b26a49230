import XCTest
import MAEData
import MAEFormats
import MAEKernels
import MAEModels
@testable import MAETasks
import TestSupport

/// DeiT distilled against timm (Fixtures/deit from scripts/make_deit_fixtures.py), and the check
/// that stops feature extraction when a backbone's features go non-finite.
final class DeiTAndNonFiniteFeatureTests: XCTestCase {
    func fixture(_ name: String) -> URL { Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)! }
    var expect: SafeTensors { get throws { try SafeTensors.read(contentsOf: fixture("deit/expect.safetensors")) } }

    func temporaryFile() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("deit-\(UUID()).safetensors")
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    /// Both tokens run in the sequence with pos_embed rows 0 and 1: every output token equals timm's
    /// forward_features (norm applied), from the safetensors and from the timm-layout .pth.
    func testDistilledForwardMatchesTimm() throws {
        let e = try expect
        let images = Tensor([4, 3, 32, 32], e.tensors["input.images"]!.floats)
        for (file, heads) in [("deit/deit_distilled_tiny.safetensors", nil), ("deit/deit_distilled_tiny.pth", 4)] {
            let loaded = try loadVisionTransformer(from: fixture(file), options: LoadOptions(heads: heads))
            let m = loaded.model
            XCTAssertTrue(m.config.distilled, file)
            XCTAssertEqual(m.params.spec("pos_embed")?.shape, [1, 18, 64])
            XCTAssertTrue(loaded.notes.contains { $0.contains("DeiT distilled") }, "\(loaded.notes)")
            let out = m.forwardEncoder(images: images.data, batch: 4).output
            XCTAssertEqual(out.shape, [4, 18, 64])
            assertClose(out.array, e.tensors["expect.forward_features"]!.floats,
                        rtol: 1e-4, atol: 1e-5, "\(file) forward_features")
        }
    }

    /// `extract --pool cls` is the cls token after norm, `--pool avg` the mean of the patch tokens
    /// after norm (both prefix tokens left out), element-wise equal to timm.
    func testExtractOfDistilledEqualsTimm() throws {
        let e = try expect, out = temporaryFile()
        for (pooling, key) in [(Pooling.cls, "expect.cls"), (.avg, "expect.avg")] {
            var o = ExtractOptions(checkpoint: fixture("deit/deit_distilled_tiny.safetensors"),
                                   data: fixture("deit/imagefolder"), out: out)
            o.pooling = pooling
            o.cropRatio = 1
            try runExtract(o)
            let features = try SafeTensors.read(contentsOf: out).tensors["features"]!
            XCTAssertEqual(features.shape, [4, 64])
            assertClose(features.floats, e.tensors[key]!.floats, rtol: 1e-4, atol: 1e-5, "extract --pool \(pooling)")
        }
    }

    /// `info` agrees (loadable, distilled, the feature stated); a resize keeps both prefix rows; a
    /// deleted dist_token is a missing backbone weight, not a plain ViT.
    func testDistilledInfoResizeAndMissingDistToken() throws {
        let url = fixture("deit/deit_distilled_tiny.safetensors")
        let info = try CheckpointInfo(contentsOf: url)
        XCTAssertNil(info.refusal)
        XCTAssertEqual(info.keys.unexpected, ["head_dist.bias", "head_dist.weight"])
        XCTAssertTrue(info.rendered.contains("DeiT         distilled: cls and dist tokens both run in the sequence; --pool cls " +
                                             "is the cls token after norm (DeiT's own eval averages"), info.rendered)

        let stored = try SafeTensors.read(contentsOf: url).tensors["pos_embed"]!.floats
        let resized = try loadVisionTransformer(from: url, options: LoadOptions(imgSize: 48))
        XCTAssertEqual(resized.model.params.spec("pos_embed")?.shape, [1, 2 + 36, 64])
        let pos = Array(resized.model.params.value("pos_embed"))
        XCTAssertEqual(Array(pos[0..<128]), Array(stored[0..<128]), "cls and dist rows kept")
        XCTAssertEqual(pos, resizePositionEmbedding(stored, width: 64, from: 4, to: 6, prefixTokens: 2))
        XCTAssertTrue(resized.notes.contains("pos_embed resized from 4x4 to 6x6 (bicubic)"), "\(resized.notes)")

        let file = try SafeTensors.read(contentsOf: url)
        let noDist = temporaryFile()
        try SafeTensors(tensors: file.order.filter { $0 != "dist_token" }.map { ($0, file.tensors[$0]!) },
                        metadata: file.metadata).write(to: noDist)
        let reason = "refusing to load: 1 backbone weight is missing (dist_token), which would leave the backbone partly random"
        XCTAssertEqual(try CheckpointInfo(contentsOf: noDist).refusal, reason)
        XCTAssertThrowsError(try loadVisionTransformer(from: noDist)) { XCTAssertEqual("\($0)", "\(noDist.path): \(reason).") }
    }

    /// A weight set to NaN after the load (so the load check passed): extraction stops naming the
    /// first image and the stage where its forward first went non-finite.
    func testNonFiniteFeaturesNameTheImageAndTheStage() throws {
        let folder = try ImageFolder(root: fixture("deit/imagefolder"))
        for (weight, stage) in [("blocks.1.mlp.fc2.weight", "the output of blocks.1"),
                                ("patch_embed.proj.bias", "the patch embedding (patch_embed)"),
                                ("norm.bias", "the final norm (norm)")] {
            let model = try loadVisionTransformer(from: fixture("deit/deit_distilled_tiny.safetensors")).model
            model.params.value(weight)[0] = .nan
            let feature = ProbeFeature(model: model, requested: .cls, lastBlocks: 1)
            XCTAssertThrowsError(try probeFeatures(model: model, feature: feature, folder: folder,
                                                   transform: .eval(size: 32, cropRatio: 1), batchSize: 3)) { error in
                XCTAssertTrue(error is NonFiniteError, "\(error)")
                let image = folder.samples[0].url.path
                XCTAssertTrue("\(error)".hasPrefix("\(image): its features hold "), "\(error)")
                XCTAssertTrue("\(error)".contains("(of 64), first non-finite at \(stage); refusing to evaluate a broken model."),
                              "\(weight): \(error)")
            }
        }
    }

    /// `fixture`'s weights with element 0 of each of `names` set to 3e38: finite, so the load check
    /// passes, but two of them added in one residual stream overflow to infinity in the forward.
    func overflowing(_ fixture: URL, _ names: [String]) throws -> URL {
        let file = try SafeTensors.read(contentsOf: fixture)
        let out = temporaryFile()
        try SafeTensors(tensors: file.order.map { key in
            let t = file.tensors[key]!
            guard names.contains(key) else { return (key, t) }
            var v = t.floats
            v[0] = 3e38
            return (key, StoredTensor(shape: t.shape, floats: v))
        }, metadata: file.metadata).write(to: out)
        return out
    }

    /// End to end: features that overflow stop `extract` naming the image and the stage, and no
    /// features file is written.
    func testExtractStopsOnNonFiniteFeaturesAndWritesNothing() throws {
        let checkpoint = try overflowing(fixtureURL("mae_tiny.safetensors"), ["blocks.1.attn.proj.bias", "blocks.1.mlp.fc2.bias"])
        XCTAssertNil(try CheckpointInfo(contentsOf: checkpoint).refusal, "finite weights load")
        let out = temporaryFile()
        let o = ExtractOptions(checkpoint: checkpoint, data: fixture("imagefolder"), out: out)
        XCTAssertThrowsError(try runExtract(o)) { error in
            XCTAssertTrue(error is NonFiniteError, "\(error)")
            XCTAssertTrue("\(error)".contains("imagefolder/alpha/img0.png: its features hold 64 NaN values (of 64), first " +
                                              "non-finite at the output of blocks.1; refusing to evaluate a broken model."), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: out.path))
    }

    /// `visualize` with a decoder that overflows stops naming the image, instead of drawing blanks.
    func testVisualizeStopsOnNonFiniteReconstruction() throws {
        let checkpoint = try overflowing(fixtureURL("mae_tiny.safetensors"), ["decoder_embed.bias", "decoder_blocks.0.attn.proj.bias"])
        var o = VisualizeOptions(out: temporaryFile().deletingPathExtension().appendingPathExtension("png"))
        o.checkpoint = checkpoint
        o.data = fixture("imagefolder")
        o.count = 2
        XCTAssertThrowsError(try runVisualize(o)) { error in
            XCTAssertTrue(error is NonFiniteError, "\(error)")
            XCTAssertTrue("\(error)".contains("imagefolder/alpha/img0.png: its reconstructed pixels hold"), "\(error)")
            XCTAssertTrue("\(error)".contains("first non-finite at the decoder (the encoder's output is finite)"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: o.out.path))
    }

    /// A cached feature file holding NaN (written before features were checked) is not reused.
    func testCachedNonFiniteFeaturesAreAMiss() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("cache-\(UUID())")
        addTeardownBlock { try? FileManager.default.removeItem(at: folder) }
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        let meta = ["classes": #"["a","b"]"#]
        try SafeTensors(tensors: [("features", StoredTensor(shape: [2, 2], floats: [1, .nan, 0, 1])),
                                  ("labels", StoredTensor(shape: [2], int64s: [0, 1]))], metadata: meta)
            .write(to: folder.appendingPathComponent("k.safetensors"))
        let cache = FeatureCache(folder: folder)
        let fresh = FeatureSet(features: [1, 2, 3, 4], labels: [0, 1], width: 2, classes: ["a", "b"])
        let first = try cache.features(key: "k") { fresh }
        XCTAssertFalse(first.hit)
        XCTAssertEqual(first.set.features, [1, 2, 3, 4])
        XCTAssertTrue(try cache.features(key: "k") { XCTFail("the finite file is reused"); return fresh }.hit)
    }
}
