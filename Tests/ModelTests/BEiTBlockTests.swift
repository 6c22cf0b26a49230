import MAEKernels
import TestSupport
import XCTest
@testable import MAEModels

/// One BEiT block (layer scale + relative position bias) against mmseg's own
/// `BEiTTransformerEncoderLayer` (scripts/make_beit_block_fixture.py), on the materialised and the
/// fused attention, plus finite differences of the two new parameters.
final class BEiTBlockTests: XCTestCase {
    static let width = 16, heads = 4, hidden = 64, window = 3, batch = 2
    static var tokens: Int { 1 + window * window }
    static var size: RelPosBiasSize { RelPosBiasSize(windowHeight: window, windowWidth: window, heads: heads) }

    /// The block's parameters under this model's names and mmseg's.
    static let names: [(String, String)] = [
        ("norm1.weight", "ln1.weight"), ("norm1.bias", "ln1.bias"), ("attn.qkv.weight", "attn.qkv.weight"),
        ("attn.qkv.bias", "attn.qkv.bias"), ("attn.proj.weight", "attn.proj.weight"), ("attn.proj.bias", "attn.proj.bias"),
        ("attn.relative_position_bias_table", "attn.relative_position_bias_table"),
        ("norm2.weight", "ln2.weight"), ("norm2.bias", "ln2.bias"), ("mlp.fc1.weight", "ffn.layers.0.0.weight"),
        ("mlp.fc1.bias", "ffn.layers.0.0.bias"), ("mlp.fc2.weight", "ffn.layers.1.weight"),
        ("mlp.fc2.bias", "ffn.layers.1.bias"), ("gamma_1", "gamma_1"), ("gamma_2", "gamma_2"),
    ]

    func fixture() throws -> SafeTensorsFixture { try SafeTensorsFixture("beit_block", bundle: .module) }

    /// A one-block stack with both options, its parameters from the fixture (with `overrides` by our name).
    func makeStack(_ fx: SafeTensorsFixture, fused: Bool, overrides: [String: [Float]] = [:]) throws
        -> (TransformerStack, ParameterStore) {
        var layout = ParameterLayout()
        layout.addBlocks(prefix: "blocks", depth: 1, width: Self.width, hidden: Self.hidden, heads: Self.heads,
                         layerScale: true, relPosBiasRows: Self.size.tableRows)
        let store = ParameterStore(layout: layout)
        for (ours, theirs) in Self.names {
            try store.set("blocks.0." + ours, shape: try fx.shape(theirs), overrides[ours] ?? fx.floats(theirs))
        }
        let stack = TransformerStack(layout, prefix: "blocks", depth: 1, width: Self.width, hidden: Self.hidden,
                                     heads: Self.heads, relPosBias: Self.size)
        stack.fusedAttentionTokens = fused ? 1 : Int.max
        return (stack, store)
    }

    /// Forward on x (B,N,D); with `gradOut`, the backward too: (out, dx).
    func run(_ stack: TransformerStack, _ store: ParameterStore, x: [Float], gradOut: [Float]?) -> ([Float], [Float]) {
        let pass = stack.begin(batch: Self.batch, tokens: Self.tokens, training: gradOut != nil)
        x.withUnsafeBufferPointer { pass.input.update(from: $0.baseAddress!, count: x.count) }
        var rng = RandomStream(seed: 0)
        let out = stack.forward(store, pass, rng: &rng).array
        guard let gradOut else { return (out, []) }
        store.zeroGrads()
        let dx = gradOut.withUnsafeBufferPointer { g in
            stack.backward(store, pass, dOutputs: [stack.blocks.count - 1: g.baseAddress!])
        }
        return (out, Array(UnsafeBufferPointer(start: dx, count: x.count)))
    }

    func testRelativePositionIndexIsMMSegs() throws {
        let expected = try fixture().floats("relative_position_index").map { Int32($0) }
        XCTAssertEqual(Self.size.index(), expected)
        XCTAssertEqual(Self.size.tableRows, try fixture().shape("attn.relative_position_bias_table")[0])
        XCTAssertEqual(RelPosBiasSize.squareWindow(tableRows: 228), 8)
        XCTAssertNil(RelPosBiasSize.squareWindow(tableRows: 227))
    }

    /// Forward 1e-5 / 1e-4 and every gradient (x, gammas, table, qkv, ...) 1e-4 on both attention paths.
    func testBlockMatchesMMSegOnBothAttentionPaths() throws {
        let fx = try fixture()
        for fused in [false, true] {
            let (stack, store) = try makeStack(fx, fused: fused)
            let (out, dx) = run(stack, store, x: try fx.floats("x"), gradOut: try fx.floats("grad_out"))
            XCTAssertEqual(stack.begin(batch: Self.batch, tokens: Self.tokens, training: false).fused, fused)
            let label = fused ? "fused" : "materialised"
            assertClose(out, try fx.floats("out"), rtol: 1e-4, atol: 1e-5, "\(label) out")
            assertClose(dx, try fx.floats("d_x"), rtol: 1e-4, atol: 1e-4, "\(label) d_x")
            for (ours, theirs) in Self.names {
                assertClose(Array(store.grad("blocks.0." + ours)), try fx.floats("d_" + theirs), rtol: 1e-4, atol: 1e-4,
                            "\(label) d_\(theirs)")
            }
        }
    }

    /// Central differences of sum(out * grad_out) in the gammas and the table, both paths.
    func testLayerScaleAndTableGradientsMatchFiniteDifferences() throws {
        let fx = try fixture()
        let x = try fx.floats("x"), gradOut = try fx.floats("grad_out")
        for fused in [false, true] {
            let (stack, store) = try makeStack(fx, fused: fused)
            _ = run(stack, store, x: x, gradOut: gradOut)
            for name in ["gamma_1", "gamma_2", "attn.relative_position_bias_table"] {
                let analytic = Array(store.grad("blocks.0." + name)), value = try fx.floats(name)
                checkGradient("\(fused ? "fused" : "materialised") \(name)", input: value, analytic: analytic,
                              step: 1e-2, samples: 24) { v in
                    let (s, p) = try! self.makeStack(fx, fused: fused, overrides: [name: v])
                    let out = self.run(s, p, x: x, gradOut: nil).0
                    return zip(out, gradOut).reduce(0) { $0 + Double($1.0) * Double($1.1) }
                }
            }
        }
    }

    /// Two blocks with different tables share the pass's one bias buffer: the fused backward
    /// re-gathers each block's own bias. Both tables' gradients against central differences.
    func testTwoBlocksWithTheirOwnTablesMatchFiniteDifferences() throws {
        let fx = try fixture()
        let x = try fx.floats("x"), gradOut = try fx.floats("grad_out")
        var layout = ParameterLayout()
        layout.addBlocks(prefix: "blocks", depth: 2, width: Self.width, hidden: Self.hidden, heads: Self.heads,
                         layerScale: true, relPosBiasRows: Self.size.tableRows)
        func make(_ tables: [[Float]]) throws -> (TransformerStack, ParameterStore) {
            let store = ParameterStore(layout: layout)
            for i in 0..<2 {
                for (ours, theirs) in Self.names {
                    let values = ours == "attn.relative_position_bias_table" ? tables[i] : try fx.floats(theirs)
                    try store.set("blocks.\(i)." + ours, shape: try fx.shape(theirs), values)
                }
            }
            let stack = TransformerStack(layout, prefix: "blocks", depth: 2, width: Self.width, hidden: Self.hidden,
                                         heads: Self.heads, relPosBias: Self.size)
            stack.fusedAttentionTokens = 1
            return (stack, store)
        }
        let table = try fx.floats("attn.relative_position_bias_table")
        let tables = [table, table.reversed().map { -$0 }]
        let (stack, store) = try make(tables)
        _ = run(stack, store, x: x, gradOut: gradOut)
        for i in 0..<2 {
            let analytic = Array(store.grad("blocks.\(i).attn.relative_position_bias_table"))
            checkGradient("block \(i) table", input: tables[i], analytic: analytic, step: 1e-2, samples: 24) { v in
                var changed = tables
                changed[i] = v
                let (s, p) = try! make(changed)
                return zip(self.run(s, p, x: x, gradOut: nil).0, gradOut).reduce(0) { $0 + Double($1.0) * Double($1.1) }
            }
        }
    }

    /// Without the options a block has exactly the 12 MAE tensors (no new parameter).
    func testOptionsOffAddNoParameters() {
        var plain = ParameterLayout(), beit = ParameterLayout()
        plain.addBlocks(prefix: "blocks", depth: 2, width: 16, hidden: 64, heads: 4)
        beit.addBlocks(prefix: "blocks", depth: 2, width: 16, hidden: 64, heads: 4, layerScale: true, relPosBiasRows: 28)
        XCTAssertEqual(plain.specs.count, 24)
        XCTAssertEqual(beit.specs.count, 30)
        XCTAssertEqual(beit.specs.first { $0.name == "blocks.1.attn.relative_position_bias_table" }?.shape, [28, 4])
        let config = ModelPreset.shapes.config
        var on = config
        on.beit = BEiTOptions(layerScale: 1, relativePositionWindow: 8)
        XCTAssertEqual(config.parameterLayout().totalCount + config.depth * (2 * 128 + 228 * 4), on.parameterLayout().totalCount)
    }
}
