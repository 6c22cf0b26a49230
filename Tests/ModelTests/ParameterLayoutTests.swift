import XCTest
import MAEModels

/// `ViTConfig.parameterLayout()`: the one table the model allocates from and checkpoints are checked against.
final class ParameterLayoutTests: XCTestCase {
    /// timm's vit_base_patch16_224 has 86,567,656 parameters; ViT-H/14 with MAE's decoder is listed
    /// without allocating its 2.6 GB.
    func testStandardModelsHaveTheirKnownParameterCounts() {
        var base = ModelPreset.base.config
        base.numClasses = 1000
        XCTAssertEqual(base.parameterLayout().totalCount, 86_567_656)
        var huge = ModelPreset.huge.config
        huge.decoder = ModelPreset.huge.decoder
        let layout = huge.parameterLayout()
        XCTAssertEqual(layout.specs.count, 4 + 32 * 12 + 2 + 4 + 8 * 12 + 4)
        XCTAssertEqual(layout.shapes.last?.name, "decoder_pred.bias")
        XCTAssertEqual(layout.shapes.last?.shape, [14 * 14 * 3])
    }

    /// MAE's order (tokens, patch embedding, blocks, norm, decoder, head) and its fixed position tables.
    func testOrderAndTrainableFlagsFollowMAE() throws {
        let config = ViTConfig(imgSize: 16, patchSize: 8, embedDim: 8, depth: 1, numHeads: 2, numClasses: 3,
                               decoder: DecoderConfig(embedDim: 4, depth: 1, numHeads: 1))
        let layout = config.parameterLayout()
        let names = layout.specs.map(\.name).filter { !$0.contains("blocks.") }
        XCTAssertEqual(names, ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
                               "norm.weight", "norm.bias", "decoder_embed.weight", "decoder_embed.bias", "mask_token",
                               "decoder_pos_embed", "decoder_norm.weight", "decoder_norm.bias", "decoder_pred.weight",
                               "decoder_pred.bias", "head.weight", "head.bias"])
        XCTAssertEqual(layout.specs.filter { !$0.trainable }.map(\.name), ["pos_embed", "decoder_pos_embed"])
        XCTAssertEqual(layout.offset("pos_embed"), 8)
        XCTAssertNil(layout.offset("fc_norm.weight"))
        // A global-pool DeiT-style classifier: dist_token after cls_token, fc_norm instead of norm, pos_embed learned.
        var deit = config
        deit.decoder = nil
        deit.distilled = true
        deit.pooling = .avg
        let classifier = deit.parameterLayout()
        XCTAssertEqual(Array(classifier.specs.map(\.name).prefix(3)), ["cls_token", "dist_token", "pos_embed"])
        XCTAssertEqual(classifier.specs.first { $0.name == "pos_embed" }?.shape, [1, 2 + 4, 8])
        XCTAssertTrue(classifier.specs.allSatisfy(\.trainable))
        XCTAssertNotNil(classifier.offset("fc_norm.weight"))
        XCTAssertNil(classifier.offset("norm.weight"))
        // The model allocates exactly this table.
        XCTAssertEqual(try VisionTransformer(config: deit).params.layout.shapes.map(\.name), classifier.shapes.map(\.name))
    }
}
