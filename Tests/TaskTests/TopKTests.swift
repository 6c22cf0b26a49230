import XCTest
@testable import MAETasks

/// The one top-k rule: ties and non-finite scores never count as correct.
final class TopKTests: XCTestCase {
    func testTiesCountAgainstTheSample() {
        XCTAssertTrue(isTopKHit([0.1, 0.9, 0.3] as [Float], label: 1, k: 1))
        XCTAssertFalse(isTopKHit([0.9, 0.9, 0.3] as [Float], label: 1, k: 1), "a tie with another class is a miss")
        XCTAssertTrue(isTopKHit([0.9, 0.9, 0.3] as [Float], label: 1, k: 2))
        XCTAssertFalse(isTopKHit([Float](repeating: 0, count: 10), label: 3, k: 5), "all-equal: 9 classes tie")
        XCTAssertEqual(labelRank([0.5, 0.2, 0.5, 0.5] as [Float], label: 0), 2)
    }

    func testNonFiniteLabelScoreIsNeverAHit() {
        XCTAssertFalse(isTopKHit([0, .nan, 0] as [Float], label: 1, k: 1))
        XCTAssertFalse(isTopKHit([0, .nan, 0] as [Float], label: 1, k: 100), "not even with k above the classes")
        XCTAssertFalse(isTopKHit([0, .infinity, 0] as [Float], label: 1, k: 3))
        XCTAssertFalse(isTopKHit([0, -.infinity, 0] as [Double], label: 1, k: 3))
        XCTAssertNil(labelRank([Float.nan], label: 0))
    }

    func testNaNElsewhereCountsAgainstTheSample() {
        XCTAssertFalse(isTopKHit([.nan, 1, 0] as [Float], label: 1, k: 1), "NaN is not known to be lower")
        XCTAssertTrue(isTopKHit([.nan, 1, 0] as [Float], label: 1, k: 2))
        XCTAssertEqual(labelRank([.nan, 1, .nan, 0.5] as [Double], label: 1), 2)
    }

    func testKAboveTheClassCount() {
        XCTAssertTrue(isTopKHit([3, 2, 1] as [Float], label: 2, k: 5), "top-5 of 3 classes holds every finite label")
        XCTAssertTrue(isTopKHit([1, 1, 1] as [Float], label: 0, k: 5))
    }

    func testSlicesIndexFromTheirStart() {
        let rows: [Float] = [9, 0, 0, /* row 1: */ 0, 2, 1]
        XCTAssertTrue(isTopKHit(rows[3..<6], label: 1, k: 1))
        XCTAssertFalse(isTopKHit(rows[3..<6], label: 0, k: 2))
    }

    func testTallyAndAllEqualHeadScoreZero() {
        var tally = TopKTally()
        tally.add([1, 0, 0, 0, 0, 0] as [Float], label: 0)     // top-1 hit
        tally.add([1, 0.5, 0, 0, 0, 0] as [Float], label: 1)   // top-5 hit only
        tally.add([1, 1, 1, 1, 1, 1] as [Float], label: 2)     // tie with 5: miss in both
        tally.add([Float.nan, 0, 0, 0, 0, 0], label: 0)        // NaN: miss
        XCTAssertEqual(tally.samples, 4)
        XCTAssertEqual(tally.percent.top1, 25)
        XCTAssertEqual(tally.percent.top5, 50)
        // An untrained (all-zero) linear head: every logit ties, so nothing is correct.
        let heads = LinearHeads(width: 2, classes: 10, points: [GridPoint(lr: 0.1, wd: 0)])
        let score = heads.evaluate([1, 2, 3, 4], labels: [0, 7])[0]
        XCTAssertEqual(score.top1, 0)
        XCTAssertEqual(score.top5, 0)
    }

    /// A backbone with a NaN weight gives NaN features: kNN must not call that 100% (it did).
    func testKNNOnNaNFeaturesIsNotCorrect() {
        let train: [Float] = [1, 0, 0, 1, 1, 1, -1, 0]
        let labels = [0, 1, 2, 3]
        let nanQueries = [Float](repeating: .nan, count: 4)
        let s = knnClassify(train: train, trainLabels: labels, test: nanQueries, testLabels: [0, 1], width: 2, classes: 4,
                            k: 2, temperature: 0.07)
        XCTAssertEqual(s.top1, 0)
        XCTAssertEqual(s.top5, 0, "no class is ranked when the vote is undefined")
        let nanTrain = knnClassify(train: [Float](repeating: .nan, count: 8), trainLabels: labels, test: [1, 0],
                                   testLabels: [0], width: 2, classes: 4, k: 2, temperature: 0.07)
        XCTAssertEqual(nanTrain.top1, 0)
    }
}
