import Foundation
@testable import MAETasks
import TestSupport
import XCTest

final class DetectSpecTests: XCTestCase {
    func text(_ name: String) throws -> String {
        try String(contentsOf: repositoryRoot.appendingPathComponent("Tasks/\(name).yaml"), encoding: .utf8)
    }

    func testShippedDetectionSpecsLoad() throws {
        let shapes = try DetectSpec.load(contentsOf: repositoryRoot.appendingPathComponent("Tasks/shapes-detect.yaml"))
        XCTAssertEqual(shapes.dataset.imgSize, 64)
        XCTAssertEqual(shapes.dataset.resolve(shapes.dataset.valAnnotations).path,
                       repositoryRoot.appendingPathComponent(".mae-eval/data/shapes/scenes_val/instances.json").standardizedFileURL.path)
        let coco = try DetectSpec.load(contentsOf: repositoryRoot.appendingPathComponent("Tasks/coco-detect.yaml"))
        XCTAssertEqual(coco.model.globalBlocks, [2, 5, 8, 11])
        XCTAssertEqual(coco.heads.roiBatchSize, 512)
        XCTAssertTrue(coco.recipe.summary.contains("layer decay 0.7"), coco.recipe.summary)
    }

    /// Unknown, missing, mistyped and out-of-range fields are refused in one sentence naming the file and field.
    func testBadSpecsAreRefusedByName() throws {
        let good = try text("shapes-detect")
        let cases: [(String, String, String)] = [
            ("  conv_dim: 32 ", "  conv_dims: 32 ", "unknown field 'heads.conv_dims'"),
            ("  lr: 0.001", "  lr: fast", "recipe.lr must be a number"),
            ("  epochs: 20\n", "", "lacks the required field 'recipe.epochs'"),
            ("protocol: detect", "protocol: segment", "protocol must be detect"),
            ("  scale_factors: [2, 1, 0.5]", "  scale_factors: [3, 1]", "model.scale_factors"),
            ("  anchor_sizes: [8, 16, 32, 64]", "  anchor_sizes: [8, 16]", "one size per pyramid level"),
            ("  milestones: [16, 19]", "  milestones: [19, 16]", "recipe.milestones must be increasing"),
            ("  lsj_scale: [0.8, 1.25]", "  lsj_scale: [1.25, 0.8]", "recipe.lsj_scale"),
            ("  optimizer: adamw", "  optimizer: sgd", "recipe.optimizer must be adamw"),
            ("seeds: [0]", "seeds: [0, 0]", "seeds lists 0 twice"),
        ]
        for (from, to, fragment) in cases {
            XCTAssertTrue(good.contains(from), from)
            let bad = good.replacingOccurrences(of: from, with: to)
            XCTAssertThrowsError(try DetectSpec.parse(bad, source: "bad.yaml"), fragment) { error in
                let message = "\(error)"
                XCTAssertTrue(message.hasPrefix("bad.yaml: "), message)
                XCTAssertTrue(message.contains(fragment), "'\(message)' lacks '\(fragment)'")
                XCTAssertFalse(message.contains("\n"), message)
            }
        }
    }
}
