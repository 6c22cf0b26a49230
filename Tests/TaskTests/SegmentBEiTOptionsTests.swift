import Foundation
import MAEData
import MAEFormats
import MAEModels
@testable import MAETasks
import TestSupport
import XCTest

/// The segmentation spec's `backbone` section (BEiT's layer scale and relative position bias on the
/// loaded ViT, initialised as mmseg's MAE), training and reloading with them, and the refusals of
/// inputs and tables the bias cannot serve.
final class SegmentBEiTOptionsTests: XCTestCase {
    func shippedText() throws -> String {
        try String(contentsOf: repositoryRoot.appendingPathComponent("Tasks/shapes-segment.yaml"), encoding: .utf8)
    }

    func withBackbone(_ text: String, _ section: String) -> String {
        text.replacingOccurrences(of: "\nrecipe:\n", with: "\nbackbone: \(section)\nrecipe:\n")
    }

    func testBackboneSectionIsStrictAndOptional() throws {
        let text = try shippedText()
        let plain = try SegmentSpec.parse(text, source: "x.yaml")
        XCTAssertNil(plain.backbone)
        XCTAssertFalse(plain.recipeSummary.contains("BEiT"))
        let spec = try SegmentSpec.parse(withBackbone(text, "{rel_pos_bias: true, layer_scale: 1.0}"), source: "x.yaml")
        XCTAssertEqual(spec.backbone?.options(window: 16), BEiTOptions(layerScale: 1, relativePositionWindow: 16))
        XCTAssertTrue(spec.recipeSummary.hasSuffix(", BEiT relative position bias, layer scale 1.0"), spec.recipeSummary)
        let scaleOnly = try SegmentSpec.parse(withBackbone(text, "{layer_scale: 0.1}"), source: "x.yaml")
        XCTAssertEqual(scaleOnly.backbone?.options(window: 16), BEiTOptions(layerScale: 0.1))
        XCTAssertNil(try SegmentSpec.parse(withBackbone(text, "{rel_pos_bias: false}"), source: "x.yaml").backbone?.options(window: 16))
        XCTAssertThrowsError(try SegmentSpec.parse(withBackbone(text, "{rel_pos: true}"), source: "x.yaml")) {
            XCTAssertTrue("\($0)".contains("unknown field 'backbone.rel_pos'"), "\($0)")
        }
        XCTAssertThrowsError(try SegmentSpec.parse(withBackbone(text, "{layer_scale: 0}"), source: "x.yaml")) {
            XCTAssertTrue("\($0)".contains("backbone.layer_scale"), "\($0)")
        }
    }

    /// The extras start at mmseg's MAE init (zero tables, gamma = layer_scale), the checkpoint's
    /// parameters are copied, and each extra takes its block's layer decay id; the 2-D tables get
    /// weight decay, the gammas none.
    func testSegmenterAddsExtrasAtMMSegInitWithTheirBlocksLayerDecay() throws {
        let vit = try VisionTransformer(config: ViTConfig(imgSize: 32, patchSize: 4, embedDim: 16, depth: 4, numHeads: 2))
        vit.initializeWeights(seed: 0)
        var spec = try SegmentSpec.parse(withBackbone(try shippedText(), "{rel_pos_bias: true, layer_scale: 0.5}"), source: "x.yaml")
        spec.dataset.crop = 32
        let model = try makeSegmenter(spec, vit: vit, seed: 0)
        XCTAssertEqual(model.backbone.vit.config.beit, BEiTOptions(layerScale: 0.5, relativePositionWindow: 8))
        let p = model.params
        XCTAssertEqual(p.spec("backbone.layers.2.attn.relative_position_bias_table")?.shape, [15 * 15 + 3, 2])
        XCTAssertTrue(p.value("backbone.layers.2.attn.relative_position_bias_table").allSatisfy { $0 == 0 })
        XCTAssertTrue(p.value("backbone.layers.2.gamma_2").allSatisfy { $0 == 0.5 })
        XCTAssertEqual(Array(p.value("backbone.layers.1.attn.qkv.weight")), Array(vit.params.value("blocks.1.attn.qkv.weight")))
        let groups = model.groups(layerDecay: 0.65)
        let at = { (name: String) in p.specs.firstIndex { $0.name == name }! }
        for extra in ["gamma_1", "gamma_2", "attn.relative_position_bias_table"] {
            XCTAssertEqual(groups.lrScale[at("backbone.layers.2.\(extra)")], groups.lrScale[at("backbone.layers.2.attn.qkv.weight")])
        }
        XCTAssertNotEqual(groups.lrScale[at("backbone.layers.2.gamma_1")], groups.lrScale[at("backbone.layers.3.gamma_1")])
        XCTAssertTrue(groups.decay[at("backbone.layers.0.attn.relative_position_bias_table")])
        XCTAssertFalse(groups.decay[at("backbone.layers.0.gamma_1")])
    }

    /// One epoch with both options: the extras train (move off their init), are saved under mmseg's
    /// names, and `--eval-only` on the saved file builds them back and evaluates to the same mIoU.
    func testTrainWithExtrasSaveAndEvaluateAgain() throws {
        let root = try scratchFolder(prefix: "mae-eval-segment-beit")
        defer { try? FileManager.default.removeItem(at: root) }
        let task = try withBackbone(try TinyTasks.segmentation(batch: 2, epochs: 1), "{rel_pos_bias: true, layer_scale: 1.0}")
        let tiny = try TinySegmentation(root: root, task: task, scenes: (4, 2), depth: 2)
        let run = try runSegment(tiny.options)[0]
        let mIoU = try XCTUnwrap(try jsonObject(run.metrics)["mIoU"] as? Double)
        let saved = try SafeTensors.read(contentsOf: run.dir.appendingPathComponent("segmenter.safetensors"))
        let table = try XCTUnwrap(saved.tensors["backbone.layers.1.attn.relative_position_bias_table"])
        XCTAssertEqual(table.shape, [15 * 15 + 3, 2])
        XCTAssertTrue(table.floats.contains { $0 != 0 }, "the table did not train")
        XCTAssertTrue(try XCTUnwrap(saved.tensors["backbone.layers.0.gamma_2"]).floats.contains { $0 != 1 }, "gamma_2 did not train")
        let e = tiny.evaluating(run.dir.appendingPathComponent("segmenter.safetensors"))
        XCTAssertEqual(try XCTUnwrap(try jsonObject(try runSegment(e)[0].metrics)["mIoU"] as? Double), mIoU, accuracy: 1e-9)
    }

    func reference(_ name: String) -> URL {
        Bundle.module.url(forResource: "Fixtures/dense_reference/" + name, withExtension: nil)!
    }

    func evalOnly(_ weights: String, folder: String, size: Int) -> SegmentOptions {
        var o = SegmentOptions()
        o.evalOnly = true
        o.weights = reference(weights)
        o.valImages = reference("mmseg_val/\(folder)/images")
        o.valLabels = reference("mmseg_val/\(folder)/labels")
        o.numClasses = 4
        o.imgSize = size
        o.heads = 4
        o.verbose = false
        return o
    }

    /// A trained table at another grid is refused (its resize is not restated); so is an input the
    /// bias's window does not fit ('whole' on a non-square image), naming the image.
    func testTablesAndInputsTheBiasCannotServeAreRefused() throws {
        var o = evalOnly("mmseg_upernet_tiny_extras.safetensors", folder: "square", size: 48)
        o.outDir = try scratchFolder()
        XCTAssertThrowsError(try runSegment(o)) {
            XCTAssertTrue("\($0)".contains("mmseg_upernet_tiny_extras.safetensors: has backbone.layers.0.attn.relative_position_bias_table of 228 rows for a 8 x 8 patch grid, but the model at this input size needs 532 rows (12 x 12)"), "\($0)")
            XCTAssertTrue("\($0)".contains("--img-size 32"), "\($0)")
        }
        var wide = evalOnly("mmseg_upernet_tiny_extras.safetensors", folder: "wide", size: 32)
        wide.outDir = try scratchFolder()
        XCTAssertThrowsError(try runSegment(wide)) {
            XCTAssertTrue("\($0)".contains("cannot be segmented: the backbone's relative position bias is for a 32 x 32 px input"), "\($0)")
        }
    }
}
