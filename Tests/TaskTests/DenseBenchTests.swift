import MAETasks
import XCTest

final class DenseBenchTests: XCTestCase {
    /// `bench --model vitdet_b` times the forward only, at whole 16-pixel patches; anything else is
    /// one sentence naming the flag (before any weight is allocated).
    func testViTDetPresetRefusesOtherModesAndSizes() {
        func message(_ mode: BenchMode, _ size: Int) -> String {
            do {
                _ = try runBenchmark(BenchOptions(model: "vitdet_b", imgSize: size, batchSize: 1, mode: mode, iters: 1))
                return "no error"
            } catch { return "\(error)" }
        }
        XCTAssertEqual(message(.train, 1024), "vitdet_b is benchmarked in --mode forward only.")
        XCTAssertEqual(message(.forward, 1000), "--img-size 1000 is not a multiple of the patch size 16.")
    }
}
