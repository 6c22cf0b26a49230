import MAEDense
import MAEKernels
import XCTest

final class FeatureMapTests: XCTestCase {
    func testPlanesAreContiguousChannelsOfEachImage() {
        let map = FeatureMap(batch: 2, channels: 3, height: 4, width: 5, stride: 16)
        XCTAssertEqual([map.batch, map.channels, map.height, map.width], [2, 3, 4, 5])
        map.plane(1, 2)[7] = 1
        XCTAssertEqual(map.tensor.array.firstIndex(of: 1), (1 * 3 + 2) * 20 + 7)
    }
}
