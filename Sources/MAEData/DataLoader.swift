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

/// One batch: normalised images and their labels, in the epoch's order.
public struct Batch: Sendable {
    /// (B, 3, S, S) floats, ImageNet-normalised, CHW per image.
    public var images: [Float]
    public var labels: [Int]
    /// Dataset index of each image.
    public var indices: [Int]
    /// (B, S, S) per-pixel targets from a `DenseSampleSource`; empty otherwise.
    public var targets: [Int32] = []
    public var count: Int { labels.count }
}

/// The loader's transform for a `DenseSampleSource`: only its size is read (the source transforms).
struct DenseSampleSize: ImageTransform {
    let size: Int
    func apply(_ image: RGBImage, rng: inout RandomStream) -> RGBImage { image }
}

/// Decodes and augments batches on background threads ahead of the consumer.
///
/// Determinism: the epoch's order is a Fisher-Yates shuffle drawn from (seed, epoch), and each
/// sample's augmentation from its own stream (seed, epoch, dataset index); a batch is filled by
/// one worker and handed out strictly in order, so the batches are the same for any number of
/// workers and any thread timing. Memory is bounded: at most `prefetch` batches are being built
/// or waiting at any time.
public final class DataLoader: Sendable {
    public let source: any DataSource
    public let transform: any ImageTransform
    /// A step on each normalised image (timm's random erasing), drawing from the sample's stream
    /// after `transform`.
    public let tensorTransform: (any TensorTransform)?
    public let batchSize: Int
    public let seed: UInt64
    public let shuffle: Bool
    public let dropLast: Bool
    /// Background threads; 0 builds each batch on the consumer's thread when it is asked for.
    public let workers: Int
    public let prefetch: Int

    public init(source: any DataSource, transform: any ImageTransform, tensorTransform: (any TensorTransform)? = nil,
                batchSize: Int, seed: UInt64 = 0, shuffle: Bool = true, dropLast: Bool = false, workers: Int = 2,
                prefetch: Int? = nil) {
        precondition(batchSize > 0, "batch size must be positive")
        self.source = source
        self.transform = transform
        self.tensorTransform = tensorTransform
        self.batchSize = batchSize
        self.seed = seed
        self.shuffle = shuffle
        self.dropLast = dropLast
        self.workers = max(0, workers)
        self.prefetch = max(1, prefetch ?? 2 * max(1, workers))
    }

    /// A loader over a source that builds its own samples (joint image + target transforms); the
    /// same ordering, per-sample streams and prefetching as any other source.
    public convenience init(denseSource: any DenseSampleSource, batchSize: Int, seed: UInt64 = 0, shuffle: Bool = true,
                            dropLast: Bool = false, workers: Int = 2) {
        self.init(source: denseSource, transform: DenseSampleSize(size: denseSource.size), batchSize: batchSize, seed: seed,
                  shuffle: shuffle, dropLast: dropLast, workers: workers)
    }

    /// Number of batches per epoch.
    public var batchCount: Int {
        dropLast ? source.count / batchSize : (source.count + batchSize - 1) / batchSize
    }

    /// The sample order of `epoch`.
    public func order(epoch: Int) -> [Int] {
        var order = Array(0..<source.count)
        guard shuffle else { return order }
        var rng = RandomStream(seed: seed, epoch: epoch, index: -1)
        rng.shuffle(&order)
        return order
    }

    /// Builds batch `b` of an epoch whose order is `order`.
    func makeBatch(_ b: Int, order: [Int], epoch: Int) throws -> Batch {
        let indices = Array(order[(b * batchSize)..<min(order.count, (b + 1) * batchSize)])
        let s = transform.size, plane = 3 * s * s
        var images = [Float](repeating: 0, count: indices.count * plane)
        var targets: [Int32] = []
        try images.withUnsafeMutableBufferPointer { out in
            for (k, index) in indices.enumerated() {
                var rng = RandomStream(seed: seed, epoch: epoch, index: index)
                if let dense = source as? any DenseSampleSource {
                    targets += try dense.denseSample(index, rng: &rng, image: out.baseAddress! + k * plane)
                    continue
                }
                let image = transform.apply(try source.image(index), rng: &rng)
                image.writeNormalizedCHW(into: out.baseAddress! + k * plane)
                tensorTransform?.apply(UnsafeMutableBufferPointer(rebasing: out[(k * plane)..<((k + 1) * plane)]),
                                       channels: 3, height: s, width: s, rng: &rng)
            }
        }
        return Batch(images: images, labels: indices.map(source.label), indices: indices, targets: targets)
    }

    /// The batches of `epoch` from batch `first` on; `while let batch = try it.next() { ... }`.
    /// Batch k of an epoch is the same whichever batch the iterator started at (a resumed run
    /// starts mid-epoch).
    public func epoch(_ epoch: Int, from first: Int = 0) -> EpochIterator {
        EpochIterator(loader: self, epoch: epoch, first: first)
    }

    /// Hands out one epoch's batches in order while workers build the next ones.
    public final class EpochIterator {
        let loader: DataLoader
        let epoch: Int
        let order: [Int]
        let total: Int
        let state = State()

        /// Shared between the consumer and the workers, guarded by `cond`.
        final class State: @unchecked Sendable {
            let cond = NSCondition()
            var nextToStart = 0
            var nextToConsume = 0
            var ready: [Int: Result<Batch, Error>] = [:]
            var cancelled = false
        }

        init(loader: DataLoader, epoch: Int, first: Int) {
            self.loader = loader
            self.epoch = epoch
            order = loader.order(epoch: epoch)
            total = loader.batchCount
            state.nextToStart = min(max(first, 0), total)
            state.nextToConsume = state.nextToStart
            for _ in 0..<loader.workers {
                let thread = Thread { [state, loader, order, total, epoch] in
                    EpochIterator.work(state: state, loader: loader, order: order, total: total, epoch: epoch)
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

        static func work(state: State, loader: DataLoader, order: [Int], total: Int, epoch: Int) {
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
                let result = Result { try loader.makeBatch(b, order: order, epoch: epoch) }
                state.cond.lock()
                state.ready[b] = result
                state.cond.broadcast()
                state.cond.unlock()
            }
        }

        /// The next batch, nil at the end of the epoch; rethrows the first decoding error.
        public func next() throws -> Batch? {
            let b = state.nextToConsume
            guard b < total else { return nil }
            if loader.workers == 0 {
                state.nextToConsume += 1
                return try loader.makeBatch(b, order: order, epoch: epoch)
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
