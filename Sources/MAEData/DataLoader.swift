import Foundation
import MAEKernels

/// Something the loader can read samples from, by index.
public protocol DataSource: Sendable {
    var count: Int { get }
    func label(_ index: Int) -> Int
    /// Decodes sample `index`; errors name the file.
    func image(_ index: Int) throws -> RGBImage
}

extension ImageFolder: DataSource {
    public func label(_ index: Int) -> Int { samples[index].label }
    public func image(_ index: Int) throws -> RGBImage { try ImageCodec.decode(contentsOf: samples[index].url) }
}

extension CIFARDataset: DataSource {
    public func label(_ index: Int) -> Int { labels[index] }
}

/// A source that builds whole samples itself, image and per-pixel targets through joint transforms
/// (semantic segmentation), instead of handing the loader an image for its `transform`.
public protocol DenseSampleSource: DataSource {
    /// The side S of every sample's square image and target map.
    var size: Int { get }
    /// Sample `index` drawn from `rng` (the loader's per-sample stream): its normalised (3, S, S)
    /// image written to `image`; returns its (S, S) target map, row-major.
    func denseSample(_ index: Int, rng: inout RandomStream, image: UnsafeMutablePointer<Float>) throws -> [Int32]
}

/// One batch: normalised images and their labels or instance targets, in the epoch's order.
public struct Batch: Sendable {
    /// (B, 3, S, S) floats, normalised, CHW per image.
    public var images: [Float]
    /// Class labels (classification; empty for detection).
    public var labels: [Int]
    /// Dataset index of each image.
    public var indices: [Int]
    /// Per image: the objects and sizes of a detection batch (empty for classification).
    public var instances: [InstanceTargets]
    /// (B, S, S) per-pixel targets from a `DenseSampleSource`; empty otherwise.
    public var targets: [Int32]
    /// Which rows of the epoch's global batch these are (the whole batch unless the loader is one
    /// rank's shard).
    public var shard: BatchShard
    /// For a shard of a loader with `mixPartners`: the rows of the flipped global batch that meet
    /// this shard's rows (global row total - 1 - g for row g), which other ranks hold; nil otherwise.
    public var partners: MixPartners?
    public var count: Int { indices.count }

    public init(images: [Float], labels: [Int], indices: [Int], instances: [InstanceTargets] = [], targets: [Int32] = [],
                shard: BatchShard? = nil, partners: MixPartners? = nil) {
        self.images = images; self.labels = labels; self.indices = indices; self.instances = instances
        self.targets = targets
        self.shard = shard ?? .whole(indices.count); self.partners = partners
    }
}

/// Builds one batch from dataset indices; sample `index` draws its augmentation from its own stream
/// `RandomStream(seed:epoch:index:)`, so a batch never depends on which worker built it.
public protocol BatchBuilder: Sendable {
    /// Samples in the dataset.
    var count: Int { get }
    func batch(indices: [Int], epoch: Int, seed: UInt64) throws -> Batch
}

/// The classification pipeline: decode, augment, ImageNet-normalise, then an optional tensor step.
struct ImageBatchBuilder: BatchBuilder {
    let source: any DataSource
    let transform: any ImageTransform
    let tensorTransform: (any TensorTransform)?
    var count: Int { source.count }

    func batch(indices: [Int], epoch: Int, seed: UInt64) throws -> Batch {
        let s = transform.size, plane = 3 * s * s
        var images = [Float](repeating: 0, count: indices.count * plane)
        try images.withUnsafeMutableBufferPointer { out in
            for (k, index) in indices.enumerated() {
                var rng = RandomStream(seed: seed, epoch: epoch, index: index)
                let image = transform.apply(try source.image(index), rng: &rng)
                image.writeNormalizedCHW(into: out.baseAddress! + k * plane)
                tensorTransform?.apply(UnsafeMutableBufferPointer(rebasing: out[(k * plane)..<((k + 1) * plane)]),
                                       channels: 3, height: s, width: s, rng: &rng)
            }
        }
        return Batch(images: images, labels: indices.map(source.label), indices: indices)
    }
}

/// The segmentation pipeline: each sample's image and target map from its `DenseSampleSource`.
struct DenseSampleBuilder: BatchBuilder {
    let source: any DenseSampleSource
    var count: Int { source.count }

    func batch(indices: [Int], epoch: Int, seed: UInt64) throws -> Batch {
        let s = source.size, plane = 3 * s * s
        var images = [Float](repeating: 0, count: indices.count * plane)
        var targets: [Int32] = []
        try images.withUnsafeMutableBufferPointer { out in
            for (k, index) in indices.enumerated() {
                var rng = RandomStream(seed: seed, epoch: epoch, index: index)
                targets += try source.denseSample(index, rng: &rng, image: out.baseAddress! + k * plane)
            }
        }
        return Batch(images: images, labels: indices.map(source.label), indices: indices, targets: targets)
    }
}

/// Decodes and augments batches on background threads ahead of the consumer.
///
/// Determinism: the epoch's order is a Fisher-Yates shuffle drawn from (seed, epoch), and each
/// sample's augmentation from its own stream (seed, epoch, dataset index); a batch is filled by
/// one worker and handed out strictly in order, so the batches are the same for any number of
/// workers and any thread timing. Memory is bounded: at most `prefetch` batches are being built
/// or waiting at any time.
///
/// Data parallelism: a loader for rank r of `ranks` builds only its rows (`BatchShard`) of each
/// global batch: the same order, batch count and per-sample augmentation as one process, so the
/// ranks' shards of batch k together are exactly the one-process batch k.
public final class DataLoader: Sendable {
    /// What turns dataset indices into a batch (classification images, or detection images and targets).
    public let builder: any BatchBuilder
    public let batchSize: Int
    public let seed: UInt64
    public let shuffle: Bool
    public let dropLast: Bool
    /// Background threads; 0 builds each batch on the consumer's thread when it is asked for.
    public let workers: Int
    public let prefetch: Int
    /// This loader's rank among `ranks` sharding every global batch (0 of 1: the whole batch).
    public let rank: Int, ranks: Int
    /// Shards also build `Batch.partners` (mixup and cutmix pair each row with the flipped batch's).
    public let mixPartners: Bool

    /// A classification loader; `tensorTransform` is a step on each normalised image (timm's random
    /// erasing), drawing from the sample's stream after `transform`.
    public convenience init(source: any DataSource, transform: any ImageTransform, tensorTransform: (any TensorTransform)? = nil,
                            batchSize: Int, seed: UInt64 = 0, shuffle: Bool = true, dropLast: Bool = false, workers: Int = 2,
                            prefetch: Int? = nil, rank: Int = 0, of ranks: Int = 1, mixPartners: Bool = false) {
        self.init(builder: ImageBatchBuilder(source: source, transform: transform, tensorTransform: tensorTransform),
                  batchSize: batchSize, seed: seed, shuffle: shuffle, dropLast: dropLast, workers: workers, prefetch: prefetch,
                  rank: rank, of: ranks, mixPartners: mixPartners)
    }

    /// A loader over a source that builds its own samples (joint image + target transforms); the
    /// same ordering, per-sample streams, prefetching and rank sharding as any other source.
    public convenience init(denseSource: any DenseSampleSource, batchSize: Int, seed: UInt64 = 0, shuffle: Bool = true,
                            dropLast: Bool = false, workers: Int = 2, rank: Int = 0, of ranks: Int = 1) {
        self.init(builder: DenseSampleBuilder(source: denseSource), batchSize: batchSize, seed: seed, shuffle: shuffle,
                  dropLast: dropLast, workers: workers, rank: rank, of: ranks)
    }

    public init(builder: any BatchBuilder, batchSize: Int, seed: UInt64 = 0, shuffle: Bool = true, dropLast: Bool = false,
                workers: Int = 2, prefetch: Int? = nil, rank: Int = 0, of ranks: Int = 1, mixPartners: Bool = false) {
        precondition(batchSize > 0, "batch size must be positive")
        precondition(ranks > 0 && (0..<ranks).contains(rank), "rank \(rank) of \(ranks)")
        self.rank = rank
        self.ranks = ranks
        self.mixPartners = mixPartners
        self.builder = builder
        self.batchSize = batchSize
        self.seed = seed
        self.shuffle = shuffle
        self.dropLast = dropLast
        self.workers = max(0, workers)
        self.prefetch = max(1, prefetch ?? 2 * max(1, workers))
    }

    /// Number of batches per epoch.
    public var batchCount: Int {
        dropLast ? builder.count / batchSize : (builder.count + batchSize - 1) / batchSize
    }

    /// The sample order of `epoch`.
    public func order(epoch: Int) -> [Int] {
        var order = Array(0..<builder.count)
        guard shuffle else { return order }
        var rng = RandomStream(seed: seed, epoch: epoch, index: -1)
        rng.shuffle(&order)
        return order
    }

    /// Samples in the dataset.
    public var sampleCount: Int { builder.count }

    /// Builds this rank's shard of batch `b` of an epoch whose order is `order`.
    func makeBatch(_ b: Int, order: [Int], epoch: Int) throws -> Batch {
        let global = order[(b * batchSize)..<min(order.count, (b + 1) * batchSize)]
        let shard = BatchShard(rank: rank, of: ranks, total: global.count)
        var batch = try builder.batch(indices: Array(global.dropFirst(shard.offset).prefix(shard.count)), epoch: epoch, seed: seed)
        batch.shard = shard
        if mixPartners, !shard.isWhole {
            let mirrored = (shard.offset..<(shard.offset + shard.count)).map { global[global.startIndex + shard.total - 1 - $0] }
            let rows = try builder.batch(indices: mirrored, epoch: epoch, seed: seed)
            batch.partners = MixPartners(images: rows.images, labels: rows.labels)
        }
        return batch
    }

    /// The batches of `epoch` from batch `first` on; `while let batch = try it.next() { ... }`.
    /// Batch k of an epoch is the same whichever batch the iterator started at (a resumed run
    /// starts mid-epoch).
    public func epoch(_ epoch: Int, from first: Int = 0) -> EpochIterator {
        EpochIterator(loader: self, epoch: epoch, batches: Array(min(max(first, 0), batchCount)..<batchCount))
    }

    /// Only the batches numbered `batches` of `epoch`, in that order (sharded evaluation: rank r
    /// of N takes batches r, r + N, ...; each batch is the one a full pass builds).
    public func epoch(_ epoch: Int, batches: [Int]) -> EpochIterator {
        precondition(batches.allSatisfy { (0..<batchCount).contains($0) }, "batches outside 0..<\(batchCount)")
        return EpochIterator(loader: self, epoch: epoch, batches: batches)
    }

    /// Hands out one epoch's batches in order while workers build the next ones.
    public final class EpochIterator {
        let loader: DataLoader
        let epoch: Int
        let order: [Int]
        /// The batch numbers handed out, in order; the state's counters index into it.
        let batches: [Int]
        let state = State()

        /// Shared between the consumer and the workers, guarded by `cond`.
        final class State: @unchecked Sendable {
            let cond = NSCondition()
            var nextToStart = 0
            var nextToConsume = 0
            var ready: [Int: Result<Batch, Error>] = [:]
            var cancelled = false
        }

        init(loader: DataLoader, epoch: Int, batches: [Int]) {
            self.loader = loader
            self.epoch = epoch
            self.batches = batches
            order = loader.order(epoch: epoch)
            for _ in 0..<loader.workers {
                let thread = Thread { [state, loader, order, batches, epoch] in
                    EpochIterator.work(state: state, loader: loader, order: order, batches: batches, epoch: epoch)
                }
                thread.name = "mae-data-loader"
                thread.start()
            }
        }

        deinit {
            state.cond.lock()
            state.cancelled = true
            state.cond.broadcast()
            state.cond.unlock()
        }

        static func work(state: State, loader: DataLoader, order: [Int], batches: [Int], epoch: Int) {
            let total = batches.count
            while true {
                state.cond.lock()
                while !state.cancelled && state.nextToStart < total
                        && state.nextToStart >= state.nextToConsume + loader.prefetch {
                    state.cond.wait()
                }
                if state.cancelled || state.nextToStart >= total { state.cond.unlock(); return }
                let b = state.nextToStart
                state.nextToStart += 1
                state.cond.unlock()
                let result = Result { try loader.makeBatch(batches[b], order: order, epoch: epoch) }
                state.cond.lock()
                state.ready[b] = result
                state.cond.broadcast()
                state.cond.unlock()
            }
        }

        /// The next batch, nil at the end of the epoch; rethrows the first decoding error.
        public func next() throws -> Batch? {
            let b = state.nextToConsume
            guard b < batches.count else { return nil }
            if loader.workers == 0 {
                state.nextToConsume += 1
                return try loader.makeBatch(batches[b], order: order, epoch: epoch)
            }
            state.cond.lock()
            while state.ready[b] == nil { state.cond.wait() }
            let result = state.ready.removeValue(forKey: b)!
            state.nextToConsume += 1
            state.cond.broadcast()
            state.cond.unlock()
            return try result.get()
        }
    }
}
