import Foundation
import XCTest
@testable import MAEFormats
@testable import MAEModels
import TestSupport

final class LayoutTests: XCTestCase {
    /// Names and shapes of real models' state dicts (scripts/make_format_fixtures.py, timm 1.0.31).
    private func layout(_ name: String) throws -> (keys: [String], shapes: [String: [Int]]) {
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: formatFixture("layouts.json")))
        let entries = try XCTUnwrap((json as? [String: Any])?[name] as? [[Any]], name)
        var keys: [String] = []
        var shapes: [String: [Int]] = [:]
        for entry in entries {
            let key = entry[0] as! String
            keys.append(key)
            shapes[key] = (entry[1] as! [NSNumber]).map(\.intValue)
        }
        return (keys, shapes)
    }

    func testLayoutsAreRecognised() throws {
        let expected: [(String, CheckpointLayout)] = [
            ("timm:vit_base_patch16_224", .clsTokenClassifier),
            ("timm:vit_base_patch16_224.mae", .maePretrainEncoder),
            ("timm:vit_huge_patch14_224.mae", .maePretrainEncoder),
            ("timm:deit_small_patch16_224", .clsTokenClassifier),
            ("timm:deit_tiny_distilled_patch16_224", .deitDistilled),
            ("mae:finetuned_vit_base", .globalPoolFinetuned),
            ("mae:linprobe_vit_base", .linearProbe),
            ("mae:pretrain_full_vit_large", .maePretrainWithDecoder),
        ]
        for (name, layoutCase) in expected {
            let keys = try layout(name).keys
            XCTAssertEqual(detectLayout(keys), layoutCase, name)
            XCTAssertEqual(detectLayout(keys.map { "module." + $0 }), layoutCase, "module. " + name)
        }
        XCTAssertEqual(detectLayout(["features.0.weight", "classifier.weight"]), .unknown)
    }

    func testArchitecturesOfStandardModels() throws {
        struct Case { var name: String; var dim, depth, heads, patch, grid, hidden, classes: Int; var pool: Pooling }
        let cases = [
            Case(name: "timm:vit_base_patch16_224", dim: 768, depth: 12, heads: 12, patch: 16, grid: 14, hidden: 3072, classes: 1000, pool: .cls),
            Case(name: "timm:vit_huge_patch14_224.mae", dim: 1280, depth: 32, heads: 16, patch: 14, grid: 16, hidden: 5120, classes: 0, pool: .cls),
            Case(name: "timm:vit_large_patch16_224.mae", dim: 1024, depth: 24, heads: 16, patch: 16, grid: 14, hidden: 4096, classes: 0, pool: .cls),
            Case(name: "timm:deit_small_patch16_224", dim: 384, depth: 12, heads: 6, patch: 16, grid: 14, hidden: 1536, classes: 1000, pool: .cls),
            Case(name: "timm:deit_tiny_distilled_patch16_224", dim: 192, depth: 12, heads: 3, patch: 16, grid: 14, hidden: 768, classes: 1000, pool: .cls),
            Case(name: "mae:finetuned_vit_base", dim: 768, depth: 12, heads: 12, patch: 16, grid: 14, hidden: 3072, classes: 1000, pool: .avg),
        ]
        for c in cases {
            let shapes = canonicalize(try layout(c.name).shapes).weights
            let a = try inferArchitecture(shapes: shapes)
            XCTAssertEqual([a.embedDim, a.depth, a.numHeads ?? -1, a.patchSize, a.gridSize ?? -1, a.mlpHidden, a.numClasses, a.inChans],
                           [c.dim, c.depth, c.heads, c.patch, c.grid, c.hidden, c.classes, 3], c.name)
            XCTAssertEqual(a.pooling, c.pool, c.name)
            XCTAssertEqual(a.headsSource, .preset, c.name)
            XCTAssertNil(a.decoder, c.name)
            // Every canonical weight is there with its shape; only the known extras are left over.
            let report = KeyReport(expected: a.parameterLayout.shapes, providedShapes: shapes)
            XCTAssertTrue(report.isComplete, "\(c.name): \(report.lines)")
            XCTAssertNil(report.refusal(), c.name)
        }
        let distilled = canonicalize(try layout("timm:deit_tiny_distilled_patch16_224").shapes)
        XCTAssertEqual(distilled.report.extras.map(\.key).sorted(), ["head_dist.bias", "head_dist.weight"])
        let a = try inferArchitecture(shapes: distilled.weights)
        XCTAssertEqual(a.numPrefixTokens, 2)
        XCTAssertTrue(a.distilled)
        // dist_token is a backbone weight of a distilled model; only DeiT's distillation head is left over.
        let report = KeyReport(expected: a.parameterLayout.shapes, providedShapes: distilled.weights)
        XCTAssertEqual(report.unexpected, ["head_dist.bias", "head_dist.weight"])
        XCTAssertNil(report.refusal())
        // Without its dist_token it is still a distilled model, with a backbone weight missing.
        var noDist = distilled.weights
        noDist["dist_token"] = nil
        noDist["head_dist.weight"] = nil
        let withoutDist = try inferArchitecture(shapes: noDist)
        XCTAssertTrue(withoutDist.distilled)
        XCTAssertEqual(KeyReport(expected: withoutDist.parameterLayout.shapes, providedShapes: noDist).refusal(),
                       "refusing to load: 1 backbone weight is missing (dist_token), which would leave the backbone partly random")
    }

    func testMAEPretrainWithDecoderAndLinearProbe() throws {
        let full = try inferArchitecture(shapes: try layout("mae:pretrain_full_vit_large").shapes)
        XCTAssertEqual(full.decoder, InferredDecoder(embedDim: 512, depth: 8, mlpHidden: 2048, predDim: 768, numHeads: 16))
        XCTAssertEqual(full.numHeads, 16)

        let (weights, report) = canonicalize(try layout("mae:linprobe_vit_base").shapes)
        XCTAssertEqual(weights["head.weight"], [1000, 768])
        XCTAssertEqual(weights["head_bn.running_var"], [768])
        XCTAssertNil(weights["head.1.weight"])
        XCTAssertEqual(report.renamed.count, 5)
        XCTAssertTrue(report.lines.contains("renamed head.1.weight -> head.weight (linear-probe head (Sequential[1] Linear) used as the classifier head)"))
        let arch = try inferArchitecture(shapes: weights)
        XCTAssertEqual(arch.numClasses, 1000)
        XCTAssertEqual(KeyReport(expected: arch.parameterLayout.shapes, providedShapes: weights).unexpected,
                       ["head_bn.num_batches_tracked", "head_bn.running_mean", "head_bn.running_var"])
    }

    func testPrefixesAreStrippedAndReported() throws {
        let shapes = try layout("timm:vit_tiny_patch16_224").shapes
        let wrapped = Dictionary(uniqueKeysWithValues: shapes.map { ("module.encoder." + $0.key, $0.value) })
        let (weights, report) = canonicalize(wrapped)
        XCTAssertEqual(report.strippedPrefixes, ["module.", "encoder."])
        XCTAssertEqual(weights, shapes)
        XCTAssertEqual(report.lines.first, "removed the prefix 'module.' from every key")
    }

    func testCLIPStyleViTIsRefusedNotSilentlyRandom() throws {
        let (weights, report) = canonicalize(try layout("timm:vit_base_patch16_clip_224").shapes)
        XCTAssertEqual(report.extras.map(\.key), ["norm_pre.bias", "norm_pre.weight"])
        let arch = try inferArchitecture(shapes: weights)
        let keys = KeyReport(expected: arch.parameterLayout.shapes, providedShapes: weights)
        XCTAssertEqual(keys.missing, ["patch_embed.proj.bias"])
        XCTAssertEqual(keys.refusal(), "refusing to load: 1 backbone weight is missing (patch_embed.proj.bias), " +
                       "which would leave the backbone partly random")
    }

    func testMisShapedAndMissingBackboneIsRefused() throws {
        var shapes = try layout("timm:vit_tiny_patch16_224").shapes
        let arch = try inferArchitecture(shapes: shapes)
        shapes["blocks.3.attn.qkv.weight"] = [576, 190]
        shapes["blocks.11.mlp.fc2.bias"] = nil
        shapes["head.weight"] = nil
        let report = KeyReport(expected: arch.parameterLayout.shapes, providedShapes: shapes)
        XCTAssertEqual(report.missing, ["blocks.11.mlp.fc2.bias", "head.weight"])
        XCTAssertEqual(report.misShaped.map(\.name), ["blocks.3.attn.qkv.weight"])
        XCTAssertEqual(report.lines[1], "2 missing: blocks.11.mlp.fc2.bias, head.weight")
        XCTAssertEqual(report.lines[2], "1 with the wrong shape: blocks.3.attn.qkv.weight is [576, 190], expected [576, 192]")
        XCTAssertEqual(report.refusal(), "refusing to load: 1 backbone weight is missing (blocks.11.mlp.fc2.bias) and " +
                       "1 backbone weight has the wrong shape (blocks.3.attn.qkv.weight is [576, 190], expected [576, 192]), " +
                       "which would leave the backbone partly random")
        // A missing head alone is fine: heads are trained anew.
        let headless = KeyReport(expected: arch.parameterLayout.shapes,
                                 providedShapes: try layout("timm:vit_tiny_patch16_224").shapes.filter { !$0.key.hasPrefix("head") })
        XCTAssertNil(headless.refusal())
        XCTAssertEqual(headless.refusal(head: true), "refusing to load: 2 head weights are missing (head.weight, head.bias), " +
                       "which would leave the head partly random")
    }

    func testHeadsComeFromMetadataPresetOrNowhere() throws {
        let st = try SafeTensors.read(contentsOf: TestSupport.fixtureURL("mae_tiny.safetensors"))
        let weights = st.tensors.filter { key, _ in !["expect.", "input.", "grad."].contains { key.hasPrefix($0) } }
        let a = try inferArchitecture(weights, metadata: st.metadata)
        XCTAssertEqual(a.numHeads, 4)
        XCTAssertEqual(a.headsSource, .metadata)
        XCTAssertEqual([a.embedDim, a.depth, a.patchSize, a.gridSize, a.mlpHidden], [64, 2, 8, 4, 256])
        XCTAssertEqual(a.decoder, InferredDecoder(embedDim: 32, depth: 1, mlpHidden: 128, predDim: 192, numHeads: 4))
        XCTAssertEqual(detectLayout(Array(weights.keys)), .maePretrainWithDecoder)
        XCTAssertEqual(KeyReport(expected: a.parameterLayout.shapes, provided: weights).lines, ["50 weights matched"])
        let noMetadata = try inferArchitecture(weights)
        XCTAssertNil(noMetadata.numHeads)
        XCTAssertEqual(noMetadata.headsSource, .unknown)
        XCTAssertNil(noMetadata.decoder?.numHeads)

        let cls = try SafeTensors.read(contentsOf: TestSupport.fixtureURL("vit_tiny_cls.safetensors"))
        let b = try inferArchitecture(cls.tensors, metadata: cls.metadata)
        XCTAssertEqual(b.pooling, .avg)
        XCTAssertEqual(b.numClasses, 5)
        XCTAssertEqual(b.numHeads, 4)
        XCTAssertEqual(detectLayout(Array(cls.tensors.keys)), .globalPoolFinetuned)
    }

    func testNotAViTIsOneSentence() {
        assertFormatError("r.pth", "no patch_embed.proj.weight") {
            try inferArchitecture(shapes: ["conv1.weight": [64, 3, 7, 7]], source: "r.pth")
        }
        assertFormatError("r.pth", "no transformer blocks") {
            try inferArchitecture(shapes: ["patch_embed.proj.weight": [64, 3, 8, 8]], source: "r.pth")
        }
    }
}
