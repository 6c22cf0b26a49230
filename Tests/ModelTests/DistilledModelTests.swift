import XCTest
import MAEKernels
@testable import MAEModels
import TestSupport

/// A DeiT distilled classifier trains like any other: initialisation fills both prefix rows, and the
/// backward reaches dist_token and pos_embed's dist row (finite differences).
final class DistilledModelTests: XCTestCase {
    func testDistilledClassifierGradientsReachTheDistToken() throws {
        let config = ViTConfig(imgSize: 16, patchSize: 8, embedDim: 16, depth: 1, numHeads: 2, numClasses: 3,
                               pooling: .avg, distilled: true)
        let model = try VisionTransformer(config: config)
        model.initializeWeights(seed: 1, headStd: 0.5)
        XCTAssertEqual(Array(model.params.value("pos_embed")[0..<32]), [Float](repeating: 0, count: 32), "prefix rows")
        let images = Tensor([2, 3, 16, 16], randomValues(2 * 3 * 16 * 16, seed: 2))
        let targets: [Float] = [1, 0, 0, 0, 0, 1]
        var pass: FeaturesContext!
        func loss() -> Double {
            pass = model.forwardLogits(images: images.data, batch: 2, training: true)
            return Double(model.classificationLoss(pass, targets: targets))
        }
        // Gradients at a point where the dist token matters.
        for name in ["dist_token", "pos_embed"] {
            let v = model.params.value(name)
            for i in 0..<v.count { v[i] = Float(i % 7) * 0.3 - 0.9 }
        }
        model.params.zeroGrads()
        _ = loss()
        model.backwardClassification(pass)
        for (name, range) in [("dist_token", 0..<16), ("pos_embed", 16..<32)] {
            let analytic = Array(model.params.grad(name)[range])
            XCTAssertGreaterThan(analytic.map(abs).max()!, 1e-4, "\(name) gets a gradient")
            let start = Array(model.params.value(name)[range])
            checkGradient(name, input: start, analytic: analytic, step: 1e-2) { x in
                let v = model.params.value(name)
                for (k, i) in range.enumerated() { v[i] = x[k] }
                defer { for (k, i) in range.enumerated() { v[i] = start[k] } }
                return loss()
            }
        }
    }
}
