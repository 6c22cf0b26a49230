import XCTest
import MAEFormats
import MAEKernels
@testable import MAEModels
import TestSupport

/// Hostile checkpoints made from the shipped ones (tensors dropped, NaN/Inf written in, F16/BF16
/// copies): each is refused by `loadVisionTransformer` with one sentence naming the file and the
/// weights, and `CheckpointInfo.refusal` (what `info` prints) is the same sentence.
final class HostileCheckpointTests: XCTestCase {
    let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    /// The shipped MAE backbone: 6 blocks, decoder of 4, config in the metadata.
    var maeShapes: URL { repoRoot.appendingPathComponent("Checkpoints/mae_shapes.safetensors") }
    /// The shipped supervised model: global pool + fc_norm + head.
    var supervisedShapes: URL { repoRoot.appendingPathComponent("Checkpoints/supervised_shapes.safetensors") }

    /// `url`'s tensors (file order) passed through `edit`, written to a temporary file.
    func hostile(_ url: URL, metadata keepMetadata: Bool = true,
                 _ edit: (inout [(String, StoredTensor)]) throws -> Void) throws -> URL {
        let file = try SafeTensors.read(contentsOf: url)
        var tensors = file.order.map { ($0, file.tensors[$0]!) }
        try edit(&tensors)
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID()).safetensors")
        addTeardownBlock { try? FileManager.default.removeItem(at: out) }
        try SafeTensors(tensors: tensors, metadata: keepMetadata ? file.metadata : [:]).write(to: out)
        return out
    }

    func dropping(_ url: URL, metadata: Bool = true, _ drop: @escaping (String) -> Bool) throws -> URL {
        try hostile(url, metadata: metadata) { $0.removeAll { drop($0.0) } }
    }

    /// Writes `value` at `elements` of tensor `name`.
    func poisoning(_ url: URL, _ name: String, at elements: [Int], _ value: Float) throws -> URL {
        try hostile(url) { tensors in
            let i = tensors.firstIndex { $0.0 == name }!
            var values = tensors[i].1.floats
            for e in elements { values[e] = value }
            tensors[i].1 = StoredTensor(shape: tensors[i].1.shape, floats: values)
        }
    }

    /// The load (with `options`) and `info`'s verdict for the same needs both refuse with `reason`.
    func assertRefused(_ url: URL, _ reason: String, options: LoadOptions = LoadOptions(),
                       file: StaticString = #filePath, line: UInt = #line) throws {
        let info = try CheckpointInfo(contentsOf: url)
        XCTAssertEqual(info.refusal(decoder: options.keepDecoder, head: options.keepHead), reason, file: file, line: line)
        if !options.keepDecoder && !options.keepHead {
            XCTAssertEqual(info.refusal, reason, file: file, line: line)
            XCTAssertTrue(info.rendered.contains("loadable     no: \(reason)"), info.rendered, file: file, line: line)
        }
        XCTAssertThrowsError(try loadVisionTransformer(from: url, options: options), file: file, line: line) { error in
            XCTAssertEqual("\(error)", "\(url.path): \(reason).", file: file, line: line)
        }
    }

    func testMiddleBlockMissingIsRefusedWithAndWithoutMetadata() throws {
        let reason = "refusing to load: 12 backbone weights are missing (blocks.3.*), which would leave the backbone partly random"
        for metadata in [true, false] {
            let url = try dropping(maeShapes, metadata: metadata) { $0.hasPrefix("blocks.3.") }
            let info = try CheckpointInfo(contentsOf: url)
            XCTAssertEqual(info.architecture.depth, 6, "depth is the highest block index + 1, not the consecutive run")
            try assertRefused(url, reason)
        }
        // The last two blocks gone: only the metadata's depth 6 says they are missing.
        try assertRefused(try dropping(maeShapes) { $0.hasPrefix("blocks.4.") || $0.hasPrefix("blocks.5.") },
                          "refusing to load: 24 backbone weights are missing (blocks.4.*, blocks.5.*), which would " +
                          "leave the backbone partly random")
    }

    func testOnlyPatchEmbedAndFirstBlockIsRefused() throws {
        let url = try dropping(maeShapes) { !($0.hasPrefix("patch_embed.") || $0.hasPrefix("blocks.0.")) }
        try assertRefused(url, "refusing to load: 64 backbone weights are missing (cls_token, pos_embed, blocks.1.*, " +
                          "blocks.2.*, blocks.3.*, blocks.4.*, and 3 more), which would leave the backbone partly random")
    }

    func testMissingTokensPositionEmbeddingAndFinalNormAreRefused() throws {
        let noCls = try dropping(maeShapes) { $0 == "cls_token" }
        // pos_embed is still read (not dropped as "not used"): only cls_token is missing.
        let info = try CheckpointInfo(contentsOf: noCls)
        XCTAssertFalse(info.keys.unexpected.contains("pos_embed"))
        XCTAssertEqual(info.architecture.gridSize, 8)
        try assertRefused(noCls, "refusing to load: 1 backbone weight is missing (cls_token), which would leave the " +
                          "backbone partly random")
        try assertRefused(try dropping(maeShapes) { $0 == "pos_embed" },
                          "refusing to load: 1 backbone weight is missing (pos_embed), which would leave the backbone partly random")
        try assertRefused(try dropping(maeShapes) { $0.hasPrefix("norm.") },
                          "refusing to load: 2 backbone weights are missing (norm.weight, norm.bias), which would " +
                          "leave the backbone partly random")
        // A global-pool model's pooling norm is fc_norm (its metadata says avg pooling).
        try assertRefused(try dropping(supervisedShapes) { $0.hasPrefix("fc_norm.") },
                          "refusing to load: 2 backbone weights are missing (fc_norm.weight, fc_norm.bias), which would " +
                          "leave the backbone partly random")
    }

    /// Shapes are printed as they are: a pos_embed that fits no square grid is named with its real shape.
    func testPositionEmbeddingOfNoSquareGridIsNamedWithItsRealShape() throws {
        let url = try hostile(maeShapes) { tensors in
            let i = tensors.firstIndex { $0.0 == "pos_embed" }!
            tensors[i].1 = StoredTensor(shape: [1, 60, 128], floats: Array(tensors[i].1.floats.prefix(60 * 128)))
        }
        let reason = "pos_embed has shape [1, 60, 128], not [1, 1 + G*G, D] for a square grid of G*G patches"
        XCTAssertThrowsError(try CheckpointInfo(contentsOf: url)) { XCTAssertEqual("\($0)", "\(url.path): \(reason).") }
        XCTAssertThrowsError(try loadVisionTransformer(from: url)) { XCTAssertEqual("\($0)", "\(url.path): \(reason).") }
    }

    /// The decoder is checked against the model's table: a decoder_pred for another patch size is
    /// mis-shaped for `info` and refused by the load that keeps the decoder, in the same sentence.
    func testDecoderPredictionOfAnotherPatchSizeIsRefusedWhenTheDecoderIsKept() throws {
        let url = try hostile(maeShapes) { tensors in
            for (name, shape) in [("decoder_pred.weight", [40, 64]), ("decoder_pred.bias", [40])] {
                let i = tensors.firstIndex { $0.0 == name }!
                tensors[i].1 = StoredTensor(shape: shape, floats: [Float](repeating: 0, count: shape.reduce(1, *)))
            }
        }
        XCTAssertNoThrow(try loadVisionTransformer(from: url))
        try assertRefused(url, "refusing to load: 2 decoder weights have the wrong shape (decoder_pred.weight is [40, 64], " +
                          "expected [48, 64], decoder_pred.bias is [40], expected [48]), which would leave the decoder " +
                          "partly random", options: LoadOptions(keepDecoder: true))
    }

    func testDecoderAndHeadAreNeededOnlyWhenKept() throws {
        let url = try dropping(maeShapes) { $0.hasPrefix("decoder_blocks.1.") }
        let backbone = try loadVisionTransformer(from: url)
        XCTAssertTrue(backbone.notes.contains("decoder dropped (a backbone for transfer)"), "\(backbone.notes)")
        XCTAssertNil(try CheckpointInfo(contentsOf: url).refusal)
        try assertRefused(url, "refusing to load: 12 decoder weights are missing (decoder_blocks.1.*), which would leave " +
                          "the decoder partly random", options: LoadOptions(keepDecoder: true))
        let noHeadBias = try dropping(supervisedShapes) { $0 == "head.bias" }
        XCTAssertNoThrow(try loadVisionTransformer(from: noHeadBias))
        try assertRefused(noHeadBias, "refusing to load: 1 head weight is missing (head.bias), which would leave the head " +
                          "partly random", options: LoadOptions(keepHead: true))
    }

    func testNonFiniteWeightsAreRefusedNamingTheFirstTensorInFileOrder() throws {
        try assertRefused(try poisoning(maeShapes, "blocks.0.attn.qkv.weight", at: [1234], .nan),
                          "blocks.0.attn.qkv.weight holds 1 NaN value (first at element 1234); refusing to evaluate a broken checkpoint")
        try assertRefused(try poisoning(maeShapes, "blocks.2.mlp.fc1.weight", at: [9, 7], .infinity),
                          "blocks.2.mlp.fc1.weight holds 2 infinite values (first at element 7); refusing to evaluate a broken checkpoint")
        // Two bad tensors, blocks.5's first in the file: that one is named.
        let reordered = try hostile(maeShapes) { tensors in
            for name in ["blocks.1.norm1.bias", "blocks.5.mlp.fc2.bias"] {
                let i = tensors.firstIndex { $0.0 == name }!
                var v = tensors[i].1.floats
                v[3] = name.hasPrefix("blocks.1") ? -.infinity : .nan
                v[5] = .nan
                tensors[i].1 = StoredTensor(shape: tensors[i].1.shape, floats: v)
            }
            let last = tensors.remove(at: tensors.firstIndex { $0.0 == "blocks.5.mlp.fc2.bias" }!)
            tensors.insert(last, at: 0)
        }
        try assertRefused(reordered, "blocks.5.mlp.fc2.bias holds 2 NaN values (first at element 3); refusing to evaluate a broken checkpoint")
        // Only in the decoder: a backbone load is fine, visualize's load is refused.
        let decoder = try poisoning(maeShapes, "decoder_pred.weight", at: [3], .nan)
        XCTAssertNoThrow(try loadVisionTransformer(from: decoder))
        try assertRefused(decoder, "decoder_pred.weight holds 1 NaN value (first at element 3); refusing to evaluate a broken checkpoint",
                          options: LoadOptions(keepDecoder: true))
    }

    /// F16 and BF16 copies load (rounded weights, close features) and are checked after conversion.
    func testHalfPrecisionCopiesLoadAndTheirNaNsAreRefused() throws {
        func halfCopy(_ url: URL, _ dtype: DType) throws -> URL {
            try hostile(url) { tensors in
                tensors = try tensors.map { name, t in
                    let bits: [UInt16] = t.floats.map {
                        dtype == .f16 ? Float16($0).bitPattern : UInt16(truncatingIfNeeded: $0.bitPattern >> 16)
                    }
                    return (name, try StoredTensor(shape: t.shape, dtype: dtype, bytes: bits.withUnsafeBytes { Data($0) }))
                }
            }
        }
        let reference = try loadVisionTransformer(from: maeShapes).model
        let images = Tensor([2, 3, 32, 32], randomValues(2 * 3 * 32 * 32, seed: 3))
        let expected = reference.forwardFeatures(images: images.data, batch: 2).features.array
        for dtype in [DType.f16, .bf16] {
            let model = try loadVisionTransformer(from: try halfCopy(maeShapes, dtype)).model
            let features = model.forwardFeatures(images: images.data, batch: 2).features.array
            assertClose(features, expected, rtol: 0.1, atol: dtype == .f16 ? 0.02 : 0.1, "\(dtype) features")
            try assertRefused(try halfCopy(try poisoning(maeShapes, "blocks.0.attn.qkv.weight", at: [1234], .nan), dtype),
                              "blocks.0.attn.qkv.weight holds 1 NaN value (first at element 1234); refusing to evaluate a broken checkpoint")
        }
        // F16's largest finite value converts fine; its infinity does not.
        try assertRefused(try halfCopy(try poisoning(maeShapes, "norm.weight", at: [0], 1e6), .f16),
                          "norm.weight holds 1 infinite value (first at element 0); refusing to evaluate a broken checkpoint")
    }

    func testNonFiniteCountFindsEveryKindAndTheFirstIndex() {
        XCTAssertNil(NonFiniteCount([1, -2, .greatestFiniteMagnitude, -.leastNonzeroMagnitude, 0]))
        XCTAssertEqual(NonFiniteCount([0, .infinity, 1, .nan, -.infinity, .signalingNaN]),
                       NonFiniteCount(nan: 2, infinite: 2, first: 1))
        XCTAssertEqual(NonFiniteCount(nan: 2, infinite: 2, first: 1).phrase, "2 NaN and 2 infinite values")
        var long = [Float](repeating: 0.5, count: 100_003)
        long[100_002] = .nan
        XCTAssertEqual(NonFiniteCount(long), NonFiniteCount(nan: 1, infinite: 0, first: 100_002))
    }

    /// The loader's model has exactly the parameters `InferredArchitecture.parameterLayout` checks the file
    /// against, so nothing the model holds can miss the check.
    func testTheCheckedParameterSetIsTheModelsParameterSet() throws {
        for (url, options) in [(maeShapes, LoadOptions(keepDecoder: true)), (supervisedShapes, LoadOptions(keepHead: true)),
                               (fixtureURL("mae_tiny.safetensors"), LoadOptions(keepDecoder: true))] {
            let loaded = try loadVisionTransformer(from: url, options: options)
            let checked = loaded.info.architecture.parameterLayout.shapes
            XCTAssertEqual(checked.map(\.name).sorted(), loaded.model.params.specs.map(\.name).sorted(), url.lastPathComponent)
            for (name, shape) in checked { XCTAssertEqual(loaded.model.params.spec(name)?.shape, shape, name) }
        }
    }

    func testNonFiniteLossSaysWhetherTheWeightsOrTheLearningRateAreToBlame() throws {
        let model = try loadVisionTransformer(from: fixtureURL("mae_tiny.safetensors")).model
        XCTAssertEqual("\(NonFiniteError.loss(.nan, at: "epoch 2, step 3", model: model, updated: true, lrAdvice: "lower base_lr"))",
                       "Training stopped at epoch 2, step 3: the loss is nan with finite weights, so training diverged; lower base_lr.")
        model.params.value("blocks.1.attn.proj.weight")[17] = .nan
        let broken = "\(NonFiniteError.loss(.nan, at: "epoch 1, step 1", model: model, updated: false, lrAdvice: "lower base_lr"))"
        XCTAssertEqual(broken, "Training stopped at epoch 1, step 1: the loss is nan before any update because the model's " +
                       "weights are not finite (blocks.1.attn.proj.weight holds 1 NaN value (first at element 17)); " +
                       "the learning rate is not the cause.")
        XCTAssertTrue("\(NonFiniteError.loss(.infinity, at: "epoch 3, step 1", model: model, updated: true, lrAdvice: "lower --blr"))"
            .contains("an update made the weights non-finite (blocks.1.attn.proj.weight"))
    }
}
