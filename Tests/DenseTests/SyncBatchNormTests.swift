import Foundation
import MAEDense
import MAEKernels
import MAEModels
import TestSupport
import XCTest

/// Ranks simulated by threads of this process: `sumOverRanks` waits until every thread has passed
/// its buffer, then hands each the elementwise sum (the all-reduce MPI performs between processes).
private final class ThreadRanks: RankSum, @unchecked Sendable {
    let size: Int
    private let cond = NSCondition()
    private var arrived = 0, generation = 0
    private var partial: [Double] = [], result: [Double] = []
    private(set) var calls = 0

    init(size: Int) { self.size = size }

    func sumOverRanks(_ values: inout [Double]) {
        cond.lock()
        defer { cond.unlock() }
        let mine = generation
        partial = arrived == 0 ? values : zip(partial, values).map(+)
        arrived += 1
        if arrived == size {
            result = partial; arrived = 0; generation += 1; calls += 1
            cond.broadcast()
        } else {
            while generation == mine { cond.wait() }
        }
        values = result
    }
}

/// Each simulated rank's result, handed from its thread.
private final class Parts: @unchecked Sendable {
    typealias Part = (out: [Float], dx: [Float], store: ParameterStore)
    private let cond = NSCondition()
    private var parts: [Int: Part] = [:]

    func set(_ rank: Int, _ part: Part) {
        cond.lock(); parts[rank] = part; cond.broadcast(); cond.unlock()
    }

    func wait(for count: Int) -> [Part] {
        cond.lock(); defer { cond.unlock() }
        while parts.count < count { cond.wait() }
        return (0..<count).map { parts[$0]! }
    }
}

/// SyncBN (`SyncBatchNorm.ranks` bound): ranks holding uneven rows of one global batch normalise,
/// update the running statistics and backpropagate as one process does on the whole batch.
final class SyncBatchNormTests: XCTestCase {
    func testTwoRanksOfOneBatchMatchTheWholeBatch() throws {
        let shape = [5, 3, 4, 3], c = shape[1], plane = shape[2] * shape[3], total = shape[0]
        let input = randomValues(shape.reduce(1, *), seed: 1, scale: 2).map { $0 + 0.5 }
        let upstream = randomValues(input.count, seed: 2)
        @Sendable func layer() -> (BatchNorm2d, ParameterStore) {
            var layout = ParameterLayout()
            let bn = BatchNorm2d("bn", in: &layout, channels: c)
            let store = ParameterStore(layout: layout)
            var rng = RandomStream(seed: 3)
            bn.initialize(store, rng: &rng)
            _ = store.value("bn.weight").update(fromContentsOf: [1.5, -0.5, 0.8] as [Float])
            _ = store.value("bn.bias").update(fromContentsOf: [0.1, 0.2, -0.3] as [Float])
            return (bn, store)
        }
        /// Rows `shard` of the batch through forward and backward (dOut = the global batch's
        /// upstream gradient over the shard's weight, as for a shard's mean loss).
        @Sendable func pass(_ shard: BatchShard) -> (out: [Float], dx: [Float], store: ParameterStore) {
            let (bn, store) = layer()
            let rows = shard.offset * c * plane..<(shard.offset + shard.count) * c * plane
            let x = Tensor([shard.count] + shape.dropFirst(), Array(input[rows]))
            let g = Tensor(x.shape, upstream[rows].map { $0 / Float(shard.weight) })
            let trace = bn.forward(x, store, training: true)
            let dx = Tensor(x.shape)
            bn.backward(trace, dOut: g, dInput: dx, store)
            return (trace.output.array, dx.array.map { $0 * Float(shard.weight) }, store)
        }
        let whole = pass(.whole(total))
        let ranks = ThreadRanks(size: 2)
        let shards = [BatchShard(offset: 0, count: 2, total: total), BatchShard(offset: 2, count: 3, total: total)]
        let parts = Parts()
        let threads = shards.indices.map { r in
            Thread { parts.set(r, SyncBatchNorm.$ranks.withValue(ranks) { pass(shards[r]) }) }
        }
        threads.forEach { $0.start() }
        let done = parts.wait(for: shards.count)
        XCTAssertEqual(ranks.calls, 2, "one statistics call in the forward, one gradient-sum call in the backward")
        assertClose(done.flatMap(\.out), whole.out, rtol: 1e-5, atol: 1e-5, "outputs")
        assertClose(done.flatMap(\.dx), whole.dx, rtol: 1e-4, atol: 1e-5, "input gradients")
        for name in ["bn.weight", "bn.bias"] {
            let summed = (0..<c).map { k in zip(done, shards).map { Float($1.weight) * $0.store.grad(name)[k] }.reduce(0, +) }
            assertClose(summed, Array(whole.store.grad(name)), rtol: 1e-4, atol: 1e-5, "\(name) gradient")
        }
        for part in done {
            for name in ["bn.running_mean", "bn.running_var", "bn.num_batches_tracked"] {
                assertClose(Array(part.store.value(name)), Array(whole.store.value(name)), rtol: 1e-5, atol: 1e-6, name)
            }
        }
        XCTAssertNil(SyncBatchNorm.ranks, "the binding ends with its scope")
    }
}
