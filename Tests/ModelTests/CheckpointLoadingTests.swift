import XCTest
import MAEFormats
import MAEJSON
import MAEKernels
@testable import MAEModels
import TestSupport

/// Loading real checkpoint files into the model, resizing pos_embed, and writing our own.
final class CheckpointLoadingTests: XCTestCase {
    func features(_ m: VisionTransformer, _ images: Tensor, batch: Int) -> [Float] {
        let out = m.forwardEncoder(images: images.data, batch: batch).output
        XCTAssertEqual(out.shape, [batch, 1 + m.config.numPatches, m.config.embedDim])
        return out.array
    }

    func testTorchZipAndSafetensorsLoadToTheSameModel() throws {
        let st = try loadVisionTransformer(from: fixtureURL("mae_tiny.safetensors"), options: LoadOptions(keepDecoder: true))
        XCTAssertEqual(st.model.config.numHeads, 4, "heads from the fixture's metadata")
        XCTAssertEqual(st.model.config.decoder?.numHeads, 4)
        XCTAssertThrowsError(try loadVisionTransformer(from: fixtureURL("mae_tiny.pth"))) { error in
            XCTAssertTrue("\(error)".contains("--heads"), "\(error)")
        }
        let pth = try loadVisionTransformer(from: fixtureURL("mae_tiny.pth"), options: LoadOptions(heads: 4, keepDecoder: true))
        for spec in st.model.params.specs {
            XCTAssertEqual(Array(st.model.params.value(spec.name)), Array(pth.model.params.value(spec.name)), spec.name)
        }
        let f = try SafeTensors.read(contentsOf: fixtureURL("mae_tiny.safetensors"))
        let images = Tensor([2, 3, 32, 32], f.tensors["input.images"]!.floats)
        assertClose(features(pth.model, images, batch: 2), f.tensors["expect.features_all"]!.floats, "features from .pth")
    }

    func testBackboneLoadDropsDecoderAndSaysSo() throws {
        let loaded = try loadVisionTransformer(from: fixtureURL("mae_tiny.safetensors"))
        XCTAssertNil(loaded.model.config.decoder)
        XCTAssertTrue(loaded.notes.contains { $0.contains("decoder dropped") }, "\(loaded.notes)")
    }

    /// MAE's interpolate_pos_embed, against PyTorch (bicubic, A = -0.75, align_corners false, cls kept).
    func testPositionEmbeddingResizeMatchesPyTorch() throws {
        let f = try SafeTensors.read(contentsOf: fixtureURL("vit_tiny_cls.safetensors"))
        let resized = resizePositionEmbedding(f.tensors["pos_embed"]!.floats, width: 64, from: 4, to: 6)
        assertClose(resized, f.tensors["expect.pos_embed_6x6"]!.floats, rtol: 1e-4, atol: 1e-6, "pos_embed 6x6")
        let loaded = try loadVisionTransformer(from: fixtureURL("vit_tiny_cls.safetensors"),
                                               options: LoadOptions(imgSize: 48, keepHead: true))
        XCTAssertEqual(loaded.model.config.gridSize, 6)
        assertClose(Array(loaded.model.params.value("pos_embed")), f.tensors["expect.pos_embed_6x6"]!.floats,
                    rtol: 1e-4, atol: 1e-6, "loaded pos_embed")
    }

    func testSaveWritesConfigAndProvenanceAndRoundTrips() throws {
        var c = ModelPreset.shapes.config
        c.depth = 1
        c.decoder = DecoderConfig(embedDim: 32, depth: 1, numHeads: 2)
        let m = try VisionTransformer(config: c)
        m.initializeWeights(seed: 7)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("roundtrip-\(UUID()).safetensors")
        defer { try? FileManager.default.removeItem(at: url) }
        try m.save(to: url, metadata: ["method": "mae", "data": "shapes"])
        let back = try loadVisionTransformer(from: url, options: LoadOptions(keepDecoder: true))
        XCTAssertEqual(back.model.config, c)
        XCTAssertEqual(back.metadata["method"], "mae")
        for spec in m.params.specs {
            XCTAssertEqual(Array(m.params.value(spec.name)), Array(back.model.params.value(spec.name)), spec.name)
        }
    }

    /// Identical saves give identical bytes: the config JSON in the metadata has sorted keys (the
    /// encoder's own order changes from process to process) and the weights hold no time stamp.
    func testSaveTwiceGivesSameBytesWithSortedConfigKeys() throws {
        var c = ModelPreset.shapes.config
        c.depth = 1
        c.decoder = DecoderConfig(embedDim: 32, depth: 1, numHeads: 2)
        let m = try VisionTransformer(config: c)
        m.initializeWeights(seed: 3)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("same-bytes-\(UUID())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let a = dir.appendingPathComponent("a.safetensors"), b = dir.appendingPathComponent("b.safetensors")
        try m.save(to: a, metadata: ["method": "mae"])
        try m.save(to: b, metadata: ["method": "mae"])
        XCTAssertEqual(try Data(contentsOf: a), try Data(contentsOf: b))
        let config = try XCTUnwrap(SafeTensors.read(contentsOf: a).metadata["config"])
        assertSortedKeys(try JSONValue.parse(Data(config.utf8)), "config")
    }
}

/// Fails unless every object in `value` lists its keys in sorted order.
func assertSortedKeys(_ value: JSONValue, _ path: String, file: StaticString = #filePath, line: UInt = #line) {
    switch value {
    case .object(let object):
        let keys = object.map(\.key)
        XCTAssertEqual(keys, keys.sorted(), "keys of \(path)", file: file, line: line)
        for (key, child) in object { assertSortedKeys(child, path + "." + key, file: file, line: line) }
    case .array(let items):
        for (i, child) in items.enumerated() { assertSortedKeys(child, "\(path)[\(i)]", file: file, line: line) }
    default: break
    }
}

