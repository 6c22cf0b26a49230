import MAEKernels
import MAEModels
import TestSupport
import XCTest

/// `VisionTransformer.precision = .bf16`: a classifier's forward and gradients at the bf16 rounding
/// level of fp32's, and an optimizer step reaching the bf16 products (no stale packed weights).
final class BF16ModelTests: XCTestCase {
    private func classifier(seed: UInt64) throws -> VisionTransformer {
        let m = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 4, embedDim: 32, depth: 2, numHeads: 2,
                                                        numClasses: 5, pooling: .avg))
        m.initializeWeights(seed: seed, headStd: 0.02)
        return m
    }

    private let batch = 3
    private var images: Tensor { Tensor([3, 3, 16, 16], randomValues(3 * 3 * 16 * 16, seed: 11)) }
    private var targets: [Float] { (0..<15).map { $0 % 5 == $0 / 5 ? 1 : 0 } }

    /// Logits and every parameter gradient of one cross-entropy step.
    private func step(_ m: VisionTransformer) -> (logits: [Float], grads: [Float]) {
        m.params.zeroGrads()
        let x = images
        let ctx = m.forwardLogits(images: x.data, batch: batch, training: true)
        _ = m.classificationLoss(ctx, targets: targets)
        m.backwardClassification(ctx)
        return (ctx.logits!.buffer.map { $0 }, m.params.grads.buffer.map { $0 })
    }

    /// max |a - b| / max |b|.
    private func errorRelativeToMax(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max()! / b.map(abs).max()!
    }

    func testForwardAndGradientsAreAtTheBF16RoundingLevel() throws {
        let m = try classifier(seed: 1)
        let fp32 = step(m)
        m.precision = .bf16
        let bf16 = step(m)
        for (name, a, b) in [("logits", bf16.logits, fp32.logits), ("gradients", bf16.grads, fp32.grads)] {
            let err = errorRelativeToMax(a, b)
            XCTAssertLessThan(err, 3e-2, "\(name): bf16 vs fp32")
            XCTAssertGreaterThan(err, 1e-4, "\(name): the products ran in bf16")
        }
    }

    func testAnOptimizerStepReachesTheBF16Products() throws {
        let m = try classifier(seed: 2)
        m.precision = .bf16
        let before = step(m)
        let optimizer = AdamW(count: m.params.layout.totalCount,
                              groups: ParameterGroups(layout: m.params.layout, depth: 2, noDecay: []))
        optimizer.step(m.params, lr: 1e-2)
        let after = step(m).logits
        // The same weights in a fresh model, never packed before: what the step must have produced.
        let fresh = try classifier(seed: 3)
        fresh.params.values.buffer.update(from: m.params.values.buffer)
        fresh.params.weightsChanged()
        fresh.precision = .bf16
        XCTAssertEqual(after, step(fresh).logits, "the stepped model multiplies its new weights")
        XCTAssertNotEqual(after, before.logits)
        // Loading weights by name (ParameterStore.set) also repacks.
        let name = "blocks.1.mlp.fc2.weight", spec = fresh.params.spec(name)!
        try fresh.params.set(name, shape: spec.shape, [Float](repeating: 0, count: spec.count))
        XCTAssertNotEqual(step(fresh).logits, after, "zeroed fc2 changes the logits")
    }
}
