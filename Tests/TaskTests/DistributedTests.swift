import Foundation
import MAEData
import MAEDistributed
import MAEFormats
import MAEKernels
import MAEModels
import MAETasks
import TestSupport
import XCTest

/// Data parallelism over MPI: one process without a launcher touches no MPI; the ranks' shards of a
/// global batch are the one-process batch; and the built `mae-eval` under `mpirun -np 2` fine-tunes
/// to the one-process weights (float rounding) and extracts the one-process file byte for byte.
final class DistributedTests: XCTestCase {
    func testOneProcessWorldIsANoOp() throws {
        XCTAssertFalse(World.launched(["PATH": "/usr/bin"]))
        XCTAssertTrue(World.launched(["OMPI_COMM_WORLD_SIZE": "2"]))
        XCTAssertTrue(World.launched(["PMIX_RANK": "0"]))
        XCTAssertTrue(World.launched(["PMI_SIZE": "4"]))
        let world = try Distributed.start()
        XCTAssertEqual([world.rank, world.size], [0, 1])
        XCTAssertFalse(world.usesMPI, "no launcher started the tests, so MPI must not be initialised")
        XCTAssertTrue(world.isMain)
        XCTAssertNil(DataParallel(world: world), "one process reduces nothing")
        var floats: [Float] = [1.5, -2]
        try floats.withUnsafeMutableBufferPointer { try world.allReduceSum($0) }
        XCTAssertEqual(floats, [1.5, -2])
        var doubles = [3.0]
        try world.allReduceSum(&doubles)
        XCTAssertEqual(doubles, [3])
        XCTAssertEqual(try world.allGather([1, 2, 3]), [[1, 2, 3]])
        let stats = try SyncBatchStatistics.reduced(sum: [6, 0], sumOfSquares: [14, 8], count: 4, world: world)
        XCTAssertEqual(stats.mean, [1.5, 0])
        XCTAssertEqual(stats.variance, [14.0 / 4 - 2.25, 2])
        XCTAssertEqual(stats.count, 4)
    }

    func testShardsTileTheBatch() {
        for total in [1, 7, 64] {
            for ranks in 1...min(total, 5) {
                let shards = (0..<ranks).map { BatchShard(rank: $0, of: ranks, total: total) }
                XCTAssertEqual(shards.map(\.count).reduce(0, +), total)
                XCTAssertEqual(shards.first?.offset, 0)
                for (a, b) in zip(shards, shards.dropFirst()) { XCTAssertEqual(a.offset + a.count, b.offset) }
                XCTAssertLessThanOrEqual(shards.map(\.count).max()! - shards.map(\.count).min()!, 1)
                XCTAssertEqual(shards.map(\.weight).reduce(0, +), 1, accuracy: 1e-12)
            }
        }
        XCTAssertEqual(BatchShard(offset: 2, count: 2, total: 5).rows(Array(0..<15), perRow: 3), [6, 7, 8, 9, 10, 11])
    }

    /// Three ranks' loaders of one seed give, shard by shard, exactly the one-process batches; with
    /// mix partners, mixup and cutmix of the shards are the whole batch's rows.
    func testRankLoadersShardEveryGlobalBatch() throws {
        let root = try scratchFolder()
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 20, val: 0, scenesTrain: 0, scenesVal: 0)
        let paths = try ShapesDataset.ensure(at: root.appendingPathComponent("shapes"), size: 16, seed: 3, counts: counts)
        let folder = try ImageFolder(root: paths.train)
        let transform = MAETransform.train(RandomResizedCrop(size: 16, scale: 0.2...1))
        func loader(_ rank: Int, _ ranks: Int) -> DataLoader {
            DataLoader(source: folder, transform: transform, batchSize: 8, seed: 5, shuffle: true, workers: 1, rank: rank,
                       of: ranks, mixPartners: true)
        }
        let mixer = Mixup(classes: folder.classes.count)
        let draws = [Mixup.Draw(lambda: 0.7, cutmixCenter: nil), Mixup.Draw(lambda: 0.6, cutmixCenter: (y: 5, x: 9))]
        let whole = loader(0, 1).epoch(2)
        let shards = (0..<3).map { loader($0, 3).epoch(2) }
        var batches = 0
        while let batch = try whole.next() {
            let parts = try shards.map { try XCTUnwrap(try $0.next()) }
            XCTAssertEqual(parts.flatMap(\.indices), batch.indices)
            XCTAssertEqual(parts.flatMap(\.images), batch.images)
            XCTAssertEqual(parts.map(\.shard.offset), parts.map { $0.shard.offset })
            XCTAssertEqual(Set(parts.map(\.shard.total)), [batch.count])
            XCTAssertNil(batch.partners, "the whole batch mixes with itself flipped")
            for draw in draws {
                var whole = batch.images
                let targets = mixer.mix(&whole, labels: batch.labels, channels: 3, height: 16, width: 16, draw: draw).targets
                var mixed: [Float] = [], mixedTargets: [Float] = []
                for part in parts {
                    var images = part.images
                    mixedTargets += mixer.mix(&images, labels: part.labels, partners: try XCTUnwrap(part.partners), channels: 3,
                                              height: 16, width: 16, draw: draw).targets
                    mixed += images
                }
                XCTAssertEqual(mixed, whole)
                XCTAssertEqual(mixedTargets, targets)
            }
            batches += 1
        }
        XCTAssertEqual(batches, 3)
        XCTAssertNil(try shards[1].next())
    }

    /// Drop path draws for the whole batch: two shards' training forwards are the whole batch's.
    func testDropPathOfShardsMatchesTheWholeBatch() throws {
        let model = try VisionTransformer(config: ViTConfig(imgSize: 8, patchSize: 4, embedDim: 8, depth: 3, numHeads: 2,
                                                            numClasses: 3, pooling: .avg))
        model.initializeWeights(seed: 1, headStd: 0.02)
        model.dropPath = 0.5
        var rng = RandomStream(seed: 9)
        let b = 6, plane = 3 * 8 * 8
        let images = (0..<(b * plane)).map { _ in rng.nextFloat() - 0.5 }
        let whole = images.withUnsafeBufferPointer {
            model.forwardLogits(images: $0.baseAddress!, batch: b, training: true, seed: 4).logits!.array
        }
        var sharded: [Float] = []
        for rank in 0..<2 {
            let shard = BatchShard(rank: rank, of: 2, total: b)
            model.batchShard = shard
            let part = Array(images[(shard.offset * plane)..<((shard.offset + shard.count) * plane)])
            sharded += part.withUnsafeBufferPointer {
                model.forwardLogits(images: $0.baseAddress!, batch: shard.count, training: true, seed: 4).logits!.array
            }
        }
        model.batchShard = nil
        XCTAssertEqual(sharded.count, whole.count)
        for (s, w) in zip(sharded, whole) { XCTAssertEqual(s, w, accuracy: 1e-5) }
    }

    // MARK: - mpirun on the built binary

    /// `mpirun` on PATH, or a skip saying so (`make deps` installs openmpi-bin).
    func mpirun() throws -> URL {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        for folder in path.split(separator: ":") {
            let url = URL(fileURLWithPath: String(folder)).appendingPathComponent("mpirun")
            if FileManager.default.isExecutableFile(atPath: url.path) { return url }
        }
        throw XCTSkip("mpirun is not on PATH (make deps installs openmpi-bin): the MPI tests need it")
    }

    func binary() throws -> URL {
        let folder = try XCTUnwrap(Bundle.main.executableURL).deletingLastPathComponent()
        let binary = folder.appendingPathComponent("mae-eval")
        guard FileManager.default.isExecutableFile(atPath: binary.path) else {
            throw XCTSkip("mae-eval is not built beside the tests in \(folder.path)")
        }
        return binary
    }

    /// Runs mae-eval with `arguments`, under `mpirun -np ranks --oversubscribe` when `ranks` is given;
    /// fails the test on a non-zero exit. Returns standard output.
    @discardableResult
    func run(_ arguments: [String], ranks: Int? = nil, in folder: URL, cache: String = "cache") throws -> String {
        let (status, stdout, stderr) = try launch(arguments, ranks: ranks, in: folder, cache: cache)
        XCTAssertEqual(status, 0, "mae-eval \(arguments.joined(separator: " ")) on \(ranks ?? 1) ranks: \(stderr)")
        return stdout
    }

    /// Runs mae-eval as `run` does and returns (exit status, standard output, standard error).
    func launch(_ arguments: [String], ranks: Int?, in folder: URL, cache: String = "cache") throws -> (Int32, String, String) {
        let p = Process()
        let exe = try binary()
        if let ranks {
            p.executableURL = try mpirun()
            p.arguments = ["-np", String(ranks), "--oversubscribe", exe.path] + arguments
        } else {
            p.executableURL = exe
            p.arguments = arguments
        }
        p.currentDirectoryURL = folder
        // Open MPI refuses root without both variables (containers, CI).
        p.environment = ProcessInfo.processInfo.environment.merging(
            ["MAE_EVAL_CACHE": folder.appendingPathComponent(cache).path,
             "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
             "OMPI_MCA_btl": "self,vader", "OMPI_MCA_plm_rsh_agent": ""]) { $1 }
        let out = folder.appendingPathComponent("stdout-\(UUID().uuidString)"), err = folder.appendingPathComponent("stderr-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: out.path, contents: nil)
        _ = FileManager.default.createFile(atPath: err.path, contents: nil)
        p.standardOutput = try FileHandle(forWritingTo: out)
        p.standardError = try FileHandle(forWritingTo: err)
        try p.run()
        p.waitUntilExit()
        let stdout = String(decoding: try Data(contentsOf: out), as: UTF8.self)
        let stderr = String(decoding: try Data(contentsOf: err), as: UTF8.self)
        return (p.terminationStatus, stdout, stderr)
    }

    /// A bad input under two ranks is the one-process sentence, prefixed with the rank, and ends
    /// the whole job with a non-zero status (no rank is left waiting).
    func testAnErrorUnderTwoRanksEndsTheJob() throws {
        _ = try mpirun()
        let root = try scratchFolder()
        let (data, weights) = try tinySetup(root)
        let (status, _, err) = try launch(["finetune", "--checkpoint", weights.path, "--task", "shapes-finetune",
                                           "--train-data", data.train.path, "--val-data", data.val.path,
                                           "--set", "dataset.img_size=16", "--batch-size", "1", "--epochs", "1",
                                           "--threads", "1", "--out-dir", root.appendingPathComponent("runs").path,
                                           "--no-report"], ranks: 2, in: root)
        XCTAssertNotEqual(status, 0)
        // Whichever rank aborts first may end the other before it prints.
        XCTAssertTrue((0..<2).contains { err.contains("error: rank \($0) of 2: the batch size 1 over 2 ranks leaves a rank without images") }, err)
    }

    /// The largest difference between two weight sets, and how many values it covered. The key third
    /// of each qkv bias is left out: its gradient is exactly zero (softmax ignores a shift shared by
    /// all keys), so what the backward computes there is rounding noise, and AdamW, dividing by the
    /// noise's own root mean square, turns noise from any two summation orders into lr-sized steps.
    func maxWeightDifference(_ a: [String: [Float]], _ b: [String: [Float]]) -> (max: Float, compared: Int) {
        var maxDiff: Float = 0, compared = 0
        for (name, values) in a {
            guard let other = b[name], other.count == values.count else {
                XCTFail("\(name) is missing or differs in size")
                continue
            }
            let width = values.count / 3
            for i in values.indices where !(name.hasSuffix("attn.qkv.bias") && (width..<(2 * width)).contains(i)) {
                maxDiff = max(maxDiff, abs(values[i] - other[i]))
                compared += 1
            }
        }
        return (maxDiff, compared)
    }

    /// A 16 px Shapes classification set and a tiny random MAE-method backbone for it.
    func tinySetup(_ root: URL) throws -> (data: ShapesPaths, weights: URL) {
        let counts = ShapesCounts(pretrain: 0, supervised: 0, train: 48, val: 10, scenesTrain: 0, scenesVal: 0)
        let data = try ShapesDataset.ensure(at: root.appendingPathComponent("shapes"), size: 16, seed: 3, counts: counts)
        let backbone = try VisionTransformer(config: ViTConfig(imgSize: 16, patchSize: 4, embedDim: 16, depth: 2, numHeads: 2))
        backbone.initializeWeights(seed: 1)
        let weights = root.appendingPathComponent("tiny.safetensors")
        try backbone.save(to: weights, metadata: ["method": "mae"])
        return (data, weights)
    }

    /// Fine-tuning (drop path, RandAugment, random erasing, mixup and cutmix drawing) of 2 epochs x
    /// 6 steps of batch 8: two ranks of 4 images each (mixed with the flipped global batch's rows)
    /// end at the one-process weights to float rounding, with the same log losses, and rank 0 alone
    /// wrote the run folder.
    func testTwoRankFineTuningMatchesOneProcess() throws {
        _ = try mpirun()
        let root = try scratchFolder()
        let (data, weights) = try tinySetup(root)
        func arguments(_ runs: URL) -> [String] {
            ["finetune", "--checkpoint", weights.path, "--task", "shapes-finetune", "--train-data", data.train.path,
             "--val-data", data.val.path, "--set", "dataset.img_size=16", "--set", "recipe.augmentation.reprob=0.25",
             "--set", "recipe.augmentation.mixup=0.8", "--set", "recipe.augmentation.cutmix=1.0",
             "--set", "recipe.augmentation.mixup_prob=1.0",
             "--set", "recipe.clip_grad=1.0", "--set", "recipe.base_lr=0.1", "--epochs", "2", "--batch-size", "8", "--seed", "2", "--threads", "1",
             "--out-dir", runs.path, "--no-report"]
        }
        let one = try run(arguments(root.appendingPathComponent("one")), in: root)
        let two = try run(arguments(root.appendingPathComponent("two")), ranks: 2, in: root)
        let runOne = URL(fileURLWithPath: try XCTUnwrap(one.split(separator: "\n").last.map(String.init)))
        let twoLines = two.split(separator: "\n")
        XCTAssertEqual(twoLines.count, one.split(separator: "\n").count, "rank 0 alone prints the run folders: \(two)")
        let runTwo = URL(fileURLWithPath: try XCTUnwrap(twoLines.last.map(String.init)))
        let a = try SafeTensors.read(contentsOf: runOne.appendingPathComponent("checkpoint.safetensors"))
        let b = try SafeTensors.read(contentsOf: runTwo.appendingPathComponent("checkpoint.safetensors"))
        XCTAssertEqual(a.tensors.keys.sorted(), b.tensors.keys.sorted())
        let floats = { (file: SafeTensors) in
            file.tensors.filter { $0.value.dtype == .f32 && !$0.key.hasPrefix("optim.") }.mapValues(\.floats)
        }
        let (maxDiff, compared) = maxWeightDifference(floats(a), floats(b))
        print("2 ranks vs 1 process after 12 fine-tuning steps: max weight difference \(maxDiff) over \(compared) weights")
        XCTAssertGreaterThan(compared, 1000)
        XCTAssertLessThan(maxDiff, 1e-5, "2-rank weights differ from 1-process weights by more than float rounding")
        let losses = { (run: URL) throws -> [Double] in
            try String(contentsOf: run.appendingPathComponent("log.jsonl"), encoding: .utf8).split(separator: "\n").map {
                let object = try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
                return try XCTUnwrap(object["train_loss"] as? Double ?? object["loss"] as? Double)
            }
        }
        let la = try losses(runOne), lb = try losses(runTwo)
        XCTAssertEqual(la.count, 2)
        for (x, y) in zip(la, lb) { XCTAssertEqual(x, y, accuracy: 1e-5 * max(1, abs(x))) }
        let files = try FileManager.default.contentsOfDirectory(atPath: runTwo.path).sorted()
        XCTAssertEqual(files, try FileManager.default.contentsOfDirectory(atPath: runOne.path).sorted())
    }

    /// MAE pretraining (masking noise and crops drawn per global batch) resumes on another rank
    /// count: one epoch on 1 process then the second on 2 ranks, and the reverse, both end at the
    /// weights of 1 process throughout, to float rounding.
    func testPretrainingResumesOnAnotherRankCount() throws {
        _ = try mpirun()
        let root = try scratchFolder()
        let (data, _) = try tinySetup(root)
        func pretrain(_ out: URL, epochs: Int, ranks: Int?) throws {
            try run(["pretrain", "--method", "mae", "--architecture", "16/4/16/2/2", "--decoder-architecture", "16/1/2",
                     "--data", data.train.path, "--epochs", String(epochs), "--batch-size", "8", "--lr", "0.01", "--seed", "4",
                     "--threads", "1", "--out-dir", out.path] + (epochs > 1 ? ["--resume"] : []), ranks: ranks, in: root)
        }
        func weights(_ out: URL) throws -> [String: [Float]] {
            let file = try SafeTensors.read(contentsOf: out.appendingPathComponent("backbone.safetensors"))
            return file.tensors.filter { $0.value.dtype == .f32 }.mapValues(\.floats)
        }
        var ends: [String: [String: [Float]]] = [:]
        for (name, first, second) in [("1+1", nil, nil), ("1+2", nil, 2), ("2+1", 2, nil)] as [(String, Int?, Int?)] {
            let out = root.appendingPathComponent(name)
            try pretrain(out, epochs: 1, ranks: first)
            try pretrain(out, epochs: 2, ranks: second)
            ends[name] = try weights(out)
        }
        let reference = try XCTUnwrap(ends["1+1"])
        XCTAssertGreaterThan(reference.count, 10)
        for name in ["1+2", "2+1"] {
            let other = try XCTUnwrap(ends[name])
            XCTAssertEqual(other.keys.sorted(), reference.keys.sorted())
            let maxDiff = maxWeightDifference(reference, other).max
            print("pretraining resumed on another rank count (\(name) ranks per epoch) vs 1 + 1: max weight difference \(maxDiff)")
            XCTAssertLessThan(maxDiff, 1e-5, "\(name) ranks (first epoch + second) against 1 + 1")
        }
    }

    /// The augmented linear probe (BatchNorm1d statistics reduced over the ranks: SyncBN) on two
    /// ranks ends at the one-process head and running statistics to float rounding; kNN on two
    /// ranks (features gathered) scores exactly as one process.
    func testTwoRankProbesMatchOneProcess() throws {
        _ = try mpirun()
        let root = try scratchFolder()
        let (data, weights) = try tinySetup(root)
        let common = ["--checkpoint", weights.path, "--train-data", data.train.path, "--val-data", data.val.path,
                      "--set", "dataset.img_size=16", "--threads", "1", "--no-report"]
        func probe(_ runs: URL, ranks: Int?) throws -> URL {
            let out = try run(["linprobe", "--mode", "augmented", "--task", "shapes-linprobe",
                               "--set", "recipe.augmented.batch_size=8", "--set", "recipe.augmented.epochs=2",
                               "--set", "recipe.augmented.warmup_epochs=1", "--set", "recipe.augmented.base_lr=1.0",
                               "--seed", "4", "--out-dir", runs.path] + common, ranks: ranks, in: root)
            return URL(fileURLWithPath: try XCTUnwrap(out.split(separator: "\n").last.map(String.init)))
        }
        let tensors = { (run: URL) throws -> [String: [Float]] in
            let file = try SafeTensors.read(contentsOf: run.appendingPathComponent("checkpoint.safetensors"))
            return file.tensors.filter { $0.value.dtype == .f32 && !$0.key.hasPrefix("optim.") }.mapValues(\.floats)
        }
        let one = try tensors(try probe(root.appendingPathComponent("probe-one"), ranks: nil))
        let two = try tensors(try probe(root.appendingPathComponent("probe-two"), ranks: 2))
        XCTAssertEqual(Set(one.keys), ["head.weight", "head.bias", "bn.running_mean", "bn.running_var"])
        let (maxDiff, _) = maxWeightDifference(one, two)
        print("augmented linear probe, 2 ranks vs 1 process: max difference of head and running statistics \(maxDiff)")
        XCTAssertLessThan(maxDiff, 1e-5)

        func knn(_ runs: URL, ranks: Int?) throws -> TransferMetrics {
            // A cache of its own, so each run extracts its features.
            let out = try run(["knn", "--task", "shapes-knn", "--out-dir", runs.path] + common, ranks: ranks, in: root,
                              cache: runs.lastPathComponent + "-cache")
            let dir = URL(fileURLWithPath: try XCTUnwrap(out.split(separator: "\n").last.map(String.init)))
            return try JSONDecoder().decode(TransferMetrics.self, from: Data(contentsOf: dir.appendingPathComponent("metrics.json")))
        }
        let a = try knn(root.appendingPathComponent("knn-one"), ranks: nil)
        let b = try knn(root.appendingPathComponent("knn-two"), ranks: 2)
        XCTAssertEqual([a.top1, a.top5], [b.top1, b.top5])
    }

    /// `extract` on two ranks writes the one-process file, byte for byte (4 batches of 3 dealt to the ranks, the last one short).
    func testTwoRankExtractionIsTheOneProcessFile() throws {
        _ = try mpirun()
        let root = try scratchFolder()
        let (data, weights) = try tinySetup(root)
        func arguments(_ out: URL) -> [String] {
            ["extract", "--checkpoint", weights.path, "--data", data.val.path, "--out", out.path, "--batch-size", "3",
             "--pool", "avg", "--heads", "2", "--threads", "1"]
        }
        let one = root.appendingPathComponent("one.safetensors"), two = root.appendingPathComponent("two.safetensors")
        try run(arguments(one), in: root)
        try run(arguments(two), ranks: 2, in: root)
        XCTAssertEqual(try Data(contentsOf: two), try Data(contentsOf: one))
        let file = try SafeTensors.read(contentsOf: one)
        XCTAssertEqual(file.tensors["features"]?.shape, [10, 16])
    }
}
