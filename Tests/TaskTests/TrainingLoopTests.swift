import Foundation
import MAEData
import MAEKernels
import MAEModels
import MAETasks
import XCTest

/// The training loop's parts on a toy problem: the schedules, clipping, the gradient hook's place,
/// the step streams and a mid-epoch resume in process.
final class TrainingLoopTests: XCTestCase {
    /// Twelve 4x4 images, labels 0...2.
    struct Toy: DataSource {
        var count: Int { 12 }
        func label(_ index: Int) -> Int { index % 3 }
        func image(_ index: Int) throws -> RGBImage {
            RGBImage(width: 4, height: 4, pixels: (0..<48).map { UInt8(truncatingIfNeeded: $0 * 5 + index * 17) })
        }
    }

    /// Records each step's learning rate and the gradients it saw, and applies plain SGD.
    final class SpyOptimizer: Optimizer {
        var events: [String] = []
        var gradients: [[Float]] = []
        var lrs: [Float] = []
        func step(_ params: ParameterStore, lr: Float) {
            events.append("step")
            gradients.append(Array(UnsafeBufferPointer(start: params.grads.data, count: params.layout.totalCount)))
            lrs.append(lr)
            for i in 0..<params.layout.totalCount { params.values.data[i] -= lr * params.grads.data[i] }
        }
        var state: [String: [Float]] {
            get { [:] }
            set {}
        }
    }

    struct Line: EpochLine, Equatable {
        var epoch: Int
        var loss: Double
    }

    var scratch: URL!

    override func setUpWithError() throws {
        scratch = FileManager.default.temporaryDirectory.appendingPathComponent("mae-eval-loop-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws { try? FileManager.default.removeItem(at: scratch) }

    /// A loop over the toy data whose step sets the gradient of its two parameters to (3, 4) x the
    /// batch's first pixel value and reports the values' sum as the loss.
    func toyLoop(_ params: ParameterStore, _ optimizer: SpyOptimizer, epochs: Int = 2,
                 streams: ((StepContext) -> Void)? = nil) throws -> TrainingLoop<Line> {
        let model = try VisionTransformer(config: ViTConfig(imgSize: 4, patchSize: 2, embedDim: 4, depth: 1, numHeads: 1))
        let loader = DataLoader(source: Toy(), transform: MAETransform.train(RandomResizedCrop(size: 4, scale: 0.5...1)),
                                batchSize: 4, seed: 3, shuffle: true, dropLast: true, workers: 0)
        return TrainingLoop<Line>(
            seed: 9, epochs: epochs, schedule: Schedule(baseLR: 0.1, warmupEpochs: 0, epochs: Double(epochs)), params: params,
            optimizer: optimizer, groups: ParameterGroups(layout: params.layout, depth: 0), loader: loader, total: "loss",
            blame: model, lrAdvice: "lower the lr", logFile: scratch.appendingPathComponent("log.jsonl"),
            progress: ProgressLine(enabled: false),
            step: { batch, context in
                streams?(context)
                let scale = 1 + abs(batch.images[0])
                params.grads.data[0] = 3 * scale
                params.grads.data[1] = 4 * scale
                return ["loss": Double(params.values.data[0] + params.values.data[1]), "other": 1]
            },
            record: { Line(epoch: $0.epoch, loss: $0.terms["loss"] ?? .nan) })
    }

    func toyParams() -> ParameterStore {
        var layout = ParameterLayout()
        layout.add("w", [2, 1])
        let params = ParameterStore(layout: layout)
        params.values.data[0] = 1
        params.values.data[1] = 2
        return params
    }

    func testCosineScheduleIsMAEs() {
        let schedule = Schedule(baseLR: 1, minLR: 0.1, warmupEpochs: 2, epochs: 10)
        let mae = WarmupCosine(baseLR: 1, minLR: 0.1, warmupEpochs: 2, epochs: 10)
        for epoch in stride(from: 0.0, through: 10, by: 0.25) { XCTAssertEqual(schedule.lr(atEpoch: epoch), mae.lr(atEpoch: epoch)) }
        XCTAssertEqual(schedule.lr(atEpoch: 1), 0.5)
        XCTAssertEqual(schedule.lr(atEpoch: 6), 0.55, accuracy: 1e-6)
        XCTAssertEqual(schedule.lr(atEpoch: 10), 0.1, accuracy: 1e-7)
    }

    func testStepScheduleDropsAtMilestones() {
        let schedule = Schedule(baseLR: 1, warmupEpochs: 1, epochs: 8, decay: .step(milestones: [3, 6], gamma: 0.1))
        XCTAssertEqual(schedule.lr(atEpoch: 0.5), 0.5)
        XCTAssertEqual(schedule.lr(atEpoch: 2.99), 1)
        XCTAssertEqual(schedule.lr(atEpoch: 3), 0.1, accuracy: 1e-7)
        XCTAssertEqual(schedule.lr(atEpoch: 5.5), 0.1, accuracy: 1e-7)
        XCTAssertEqual(schedule.lr(atEpoch: 7), 0.01, accuracy: 1e-8)
    }

    func testPolyScheduleFollowsMMSeg() {
        let schedule = Schedule(baseLR: 1, minLR: 0.01, warmupEpochs: 2, epochs: 12, decay: .poly(power: 0.9))
        XCTAssertEqual(schedule.lr(atEpoch: 1), 0.5)
        XCTAssertEqual(schedule.lr(atEpoch: 2), 1)
        XCTAssertEqual(schedule.lr(atEpoch: 7), Float(0.01 + 0.99 * pow(0.5, 0.9)), accuracy: 1e-6)
        XCTAssertEqual(schedule.lr(atEpoch: 12), 0.01, accuracy: 1e-7)
        XCTAssertEqual(schedule.lr(atEpoch: 20), 0.01, accuracy: 1e-7)
    }

    /// The hook runs once per step, after the step's backward and before clipping and the optimizer.
    func testHookRunsOncePerStepBeforeClippingAndTheOptimizer() throws {
        let params = toyParams(), optimizer = SpyOptimizer()
        var loop = try toyLoop(params, optimizer)
        var hooked: [[Float]] = []
        loop.gradientHook = { store in
            optimizer.events.append("hook")
            hooked.append([store.grads.data[0], store.grads.data[1]])
            store.grads.data[0] *= 2
            store.grads.data[1] *= 2
        }
        loop.clipNorm = 1
        let log = try loop.run(from: nil)
        XCTAssertEqual(log.map(\.epoch), [1, 2])
        XCTAssertEqual(optimizer.events, Array(repeating: ["hook", "step"], count: 6).flatMap { $0 })
        for (before, after) in zip(hooked, optimizer.gradients) {
            // The optimizer sees the hook's doubled gradient clipped to norm 1 (torch's coefficient).
            let norm = 2 * (before[0] * before[0] + before[1] * before[1]).squareRoot()
            XCTAssertGreaterThan(norm, 1)
            XCTAssertEqual(after[0], 2 * before[0] * (1 / (norm + 1e-6)), accuracy: 1e-6)
            XCTAssertEqual((after[0] * after[0] + after[1] * after[1]).squareRoot(), 1, accuracy: 1e-5)
        }
        // Per-step learning rates of the cosine: the first step of the run is at epoch 0.
        XCTAssertEqual(optimizer.lrs.first, 0.1)
        XCTAssertEqual(optimizer.lrs, (0..<6).map { Schedule(baseLR: 0.1, warmupEpochs: 0, epochs: 2).lr(atEpoch: Double($0) / 3) })
    }

    /// Step k of epoch e draws from (seed).derived(e).derived(k), epochs from 1 and steps from 0.
    func testStepStreamsArePureFunctionsOfEpochAndStep() throws {
        var seen: [(Int, Int, UInt64)] = []
        let loop = try toyLoop(toyParams(), SpyOptimizer(), streams: { seen.append(($0.epoch, $0.step, $0.stream.state)) })
        _ = try loop.run(from: nil)
        XCTAssertEqual(seen.map(\.0), [1, 1, 1, 2, 2, 2])
        XCTAssertEqual(seen.map(\.1), [0, 1, 2, 0, 1, 2])
        for (epoch, step, state) in seen {
            XCTAssertEqual(state, RandomStream(seed: 9).derived(UInt64(epoch)).derived(UInt64(step)).state)
        }
    }

    /// A run resumed from a mid-epoch checkpoint's loop state does the remaining steps only and
    /// ends with the same weights and log as an unbroken run.
    func testMidEpochResumeMatchesUnbrokenRun() throws {
        let unbrokenParams = toyParams()
        let unbroken = try toyLoop(unbrokenParams, SpyOptimizer()).run(from: nil)

        let params = toyParams(), optimizer = SpyOptimizer()
        var first = try toyLoop(params, optimizer)
        var saved: [LoopState] = []
        var weights: [[Float]] = []
        first.checkpointEvery = 2
        first.checkpoint = (scratch.appendingPathComponent("checkpoint"), { state in
            saved.append(state)
            weights.append([params.values.data[0], params.values.data[1]])
        })
        _ = try first.run(from: nil)
        XCTAssertEqual(saved.map { [$0.epoch, $0.step] }, [[0, 2], [1, 0], [1, 2], [2, 0]])
        XCTAssertEqual(saved[0].weight, 8, "two batches of four images")

        // Resume from "epoch 2, step 2": the weights as they were then, the log of epoch 1 on disk.
        let resumedParams = toyParams(), resumedOptimizer = SpyOptimizer()
        resumedParams.values.data[0] = weights[2][0]
        resumedParams.values.data[1] = weights[2][1]
        let resumed = try toyLoop(resumedParams, resumedOptimizer).run(from: saved[2])
        XCTAssertEqual(resumedOptimizer.events.count, 1, "only the last step of epoch 2 is left")
        XCTAssertEqual(resumed, unbroken)
        XCTAssertEqual([resumedParams.values.data[0], resumedParams.values.data[1]],
                       [unbrokenParams.values.data[0], unbrokenParams.values.data[1]])
    }

    /// A total above the limit stops the run with one sentence naming the place and the kept checkpoint.
    func testLossAboveLimitStopsWithOneSentence() throws {
        var loop = try toyLoop(toyParams(), SpyOptimizer())
        loop.lossLimit = 0.5
        XCTAssertThrowsError(try loop.run(from: nil)) { error in
            XCTAssertTrue(error is TrainingDiverged, "\(error)")
            XCTAssertEqual("\(error)", "Training stopped at epoch 1, step 1: the loss is 3.0, above its limit 0.5, so training " +
                           "diverged; lower the lr; no epoch had completed, so there is no checkpoint.")
        }
    }

    /// An epoch started at batch k hands out the same batches k, k+1, ... as one started at 0, with
    /// background workers or without.
    func testLoaderStartsAnEpochAtAnyBatch() throws {
        for workers in [0, 2] {
            let loader = DataLoader(source: Toy(), transform: MAETransform.train(RandomResizedCrop(size: 4, scale: 0.5...1)),
                                    batchSize: 3, seed: 8, shuffle: true, dropLast: false, workers: workers)
            var all: [Batch] = []
            let it = loader.epoch(2)
            while let batch = try it.next() { all.append(batch) }
            XCTAssertEqual(all.count, 4)
            for first in 0...4 {
                var rest: [Batch] = []
                let from = loader.epoch(2, from: first)
                while let batch = try from.next() { rest.append(batch) }
                XCTAssertEqual(rest.map(\.indices), all.dropFirst(first).map(\.indices), "workers \(workers), from \(first)")
                XCTAssertEqual(rest.map(\.images), all.dropFirst(first).map(\.images), "workers \(workers), from \(first)")
            }
        }
    }
}
