import XCTest
import MAEKernels
@testable import MAEModels
import TestSupport

/// AdamW, SGD, LARS, gradient clipping and the warmup-cosine schedule against PyTorch / MAE's code
/// (Fixtures/optimizers.json from scripts/make_optimizer_fixtures.py).
final class OptimizerTests: XCTestCase {
    struct Fixture: Decodable {
        struct Clip: Decodable { let max_norm: Float; let scale: Float; let norm: Float; let grads: [String: [Float]] }
        struct Schedule: Decodable { let lr: Float; let min_lr: Float; let warmup: Double; let epochs: Double; let points: [[Double]] }
        let shapes: [String: [Int]]
        let `init`: [String: [Float]]
        let grads: [[String: [Float]]]
        let lrs: [Float]
        let adamw, sgd, lars: [String: [Float]]
        let clip: Clip
        let schedule: Schedule
    }

    let names = ["w", "b", "tok"]

    func load() throws -> Fixture {
        let url = Bundle.module.url(forResource: "Fixtures/optimizers", withExtension: "json")!
        return try JSONDecoder().decode(Fixture.self, from: Data(contentsOf: url))
    }

    func makeStore(_ f: Fixture) throws -> ParameterStore {
        var layout = ParameterLayout()
        for n in names { layout.add(n, f.shapes[n]!) }
        let store = ParameterStore(layout: layout)
        for n in names { try store.set(n, shape: f.shapes[n]!, f.`init`[n]!) }
        return store
    }

    func run(_ f: Fixture, _ store: ParameterStore, _ opt: Optimizer) throws {
        for (step, g) in f.grads.enumerated() {
            for n in names { let dst = store.grad(n); for (i, v) in g[n]!.enumerated() { dst[i] = v } }
            opt.step(store, lr: f.lrs[step])
        }
    }

    func testAdamW() throws {
        let f = try load(), store = try makeStore(f)
        var groups = ParameterGroups(layout: store.layout, depth: 0, noDecay: ["tok"])
        groups.lrScale = [1, 0.5, 1]
        XCTAssertEqual(groups.decay, [true, false, false], "no decay on 1-D params and listed tokens")
        try run(f, store, AdamW(count: store.layout.totalCount, groups: groups, beta2: 0.95, weightDecay: 0.05))
        for n in names { assertClose(Array(store.value(n)), f.adamw[n]!, rtol: 1e-5, atol: 1e-6, "adamw \(n)") }
    }

    func testSGDMomentum() throws {
        let f = try load(), store = try makeStore(f)
        let groups = ParameterGroups(layout: store.layout, depth: 0, noDecay: ["tok"])
        try run(f, store, SGD(count: store.layout.totalCount, groups: groups, momentum: 0.9, weightDecay: 1e-3))
        for n in names { assertClose(Array(store.value(n)), f.sgd[n]!, rtol: 1e-5, atol: 1e-6, "sgd \(n)") }
    }

    func testLARS() throws {
        let f = try load(), store = try makeStore(f)
        let groups = ParameterGroups(layout: store.layout, depth: 0)
        try run(f, store, LARS(count: store.layout.totalCount, groups: groups))
        for n in names { assertClose(Array(store.value(n)), f.lars[n]!, rtol: 1e-5, atol: 1e-6, "lars \(n)") }
    }

    func testClipGradNorm() throws {
        let f = try load(), store = try makeStore(f)
        for n in names { let dst = store.grad(n); for (i, v) in f.grads[0][n]!.enumerated() { dst[i] = v * f.clip.scale } }
        let norm = clipGradNorm(store, groups: ParameterGroups(layout: store.layout, depth: 0), maxNorm: f.clip.max_norm)
        XCTAssertEqual(norm, f.clip.norm, accuracy: f.clip.norm * 1e-5)
        for n in names { assertClose(Array(store.grad(n)), f.clip.grads[n]!, rtol: 1e-5, atol: 1e-7, "clipped \(n)") }
    }

    func testWarmupCosineMatchesMAE() throws {
        let s = try load().schedule
        let sched = WarmupCosine(baseLR: s.lr, minLR: s.min_lr, warmupEpochs: s.warmup, epochs: s.epochs)
        for p in s.points {
            XCTAssertEqual(Double(sched.lr(atEpoch: p[0])), p[1], accuracy: 1e-9 + p[1] * 1e-5, "epoch \(p[0])")
        }
    }

    func testLayerWiseDecayScales() {
        // MAE: scale = decay^(depth + 1 - layer_id); layer 0 = tokens and patch embedding.
        XCTAssertEqual(ParameterGroups.layerID("cls_token", depth: 12), 0)
        XCTAssertEqual(ParameterGroups.layerID("patch_embed.proj.weight", depth: 12), 0)
        XCTAssertEqual(ParameterGroups.layerID("blocks.0.attn.qkv.weight", depth: 12), 1)
        XCTAssertEqual(ParameterGroups.layerID("blocks.11.mlp.fc2.bias", depth: 12), 12)
        XCTAssertEqual(ParameterGroups.layerID("fc_norm.weight", depth: 12), 13)
        XCTAssertEqual(ParameterGroups.layerID("head.weight", depth: 12), 13)
        var layout = ParameterLayout()
        layout.add("cls_token", [1, 1, 4]); layout.add("blocks.1.norm1.weight", [4]); layout.add("head.weight", [2, 4])
        let g = ParameterGroups(layout: layout, depth: 2, noDecay: ["cls_token"], layerDecay: 0.5)
        XCTAssertEqual(g.lrScale, [0.125, 0.5, 1])
        XCTAssertEqual(g.decay, [false, false, true])
    }
}
