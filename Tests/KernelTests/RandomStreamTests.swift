import XCTest
@testable import MAEKernels

/// `RandomStream.shuffle` replaced four inline Fisher-Yates loops; these orders are what those loops
/// drew (computed with the code before the change), so loader orders, probe batches and held-out
/// splits, and every number that depends on them, stay as they were.
final class RandomStreamTests: XCTestCase {
    func testShuffleDrawsTheOrdersOfTheFormerInlineLoops() {
        let expected: [UInt64: (order: [Int], nextDraw: UInt64)] = [
            0: ([0, 1, 4, 6, 3, 9, 8, 7, 2, 5], 10490244452398634873),
            1: ([4, 2, 1, 3, 7, 9, 5, 0, 6, 8], 4499275166670902083),
            42: ([4, 6, 7, 0, 9, 5, 1, 2, 3, 8], 13234865520066566216),
        ]
        for (seed, want) in expected {
            var rng = RandomStream(seed: seed)
            var order = Array(0..<10)
            rng.shuffle(&order)
            XCTAssertEqual(order, want.order, "seed \(seed)")
            // The same number of draws as before: the stream continues where it did.
            XCTAssertEqual(rng.next(), want.nextDraw, "seed \(seed)")
        }
        // The loader's epoch stream (index -1).
        var rng = RandomStream(seed: 5, epoch: 3, index: -1)
        var order = Array(0..<7)
        rng.shuffle(&order)
        XCTAssertEqual(order, [0, 3, 2, 4, 6, 5, 1])
    }

    func testShuffleOfZeroOrOneElementDrawsNothing() {
        for count in [0, 1] {
            var rng = RandomStream(seed: 9), untouched = RandomStream(seed: 9)
            var items = Array(0..<count)
            rng.shuffle(&items)
            XCTAssertEqual(items, Array(0..<count))
            XCTAssertEqual(rng.next(), untouched.next())
        }
    }
}
