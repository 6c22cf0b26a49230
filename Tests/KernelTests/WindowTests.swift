import MAEKernels
import TestSupport
import XCTest

private func partition(_ x: [Float], _ s: WindowPartitionSize) -> [Float] {
    apply(x, count: s.windows * s.windowTokens * s.channels) { windowPartitionForward(windows: $0, input: $1, size: s) }
}

private func partitionGrad(_ g: [Float], _ s: WindowPartitionSize, start: Float = 0) -> [Float] {
    apply(g, count: s.batch * s.height * s.width * s.channels, start: start) {
        windowPartitionBackward(dInput: $0, dWindows: $1, size: s)
    }
}

private func unpartition(_ w: [Float], _ s: WindowPartitionSize) -> [Float] {
    apply(w, count: s.batch * s.height * s.width * s.channels) { windowUnpartitionForward(out: $0, windows: $1, size: s) }
}

private func unpartitionGrad(_ g: [Float], _ s: WindowPartitionSize, start: Float = 0) -> [Float] {
    apply(g, count: s.windows * s.windowTokens * s.channels, start: start) {
        windowUnpartitionBackward(dWindows: $0, dOut: $1, size: s)
    }
}

final class WindowTests: XCTestCase {
    /// detectron2's window_partition / window_unpartition: ViTDet's 64x64 map padded to 70x70 and
    /// cut into 25 windows of 14x14, a map that needs no padding (28x42), and a small map padded on
    /// both axes (5x3, window 4). Exact copies, so the comparison is exact; gradients accumulate onto 0.5.
    func testWindowPartitionMatchesDetectron2() throws {
        let fx = try AttentionFixture("window")
        for name in ["padded", "unpadded", "odd"] {
            let z = try fx.sizes(name)
            let s = WindowPartitionSize(batch: z[0], height: z[1], width: z[2], channels: z[3], window: z[4])
            XCTAssertEqual(try fx.shape("\(name)/partition/windows"), [s.windows, s.windowTokens, s.channels], name)
            let p = "\(name)/partition", u = "\(name)/unpartition"
            XCTAssertEqual(partition(try fx.floats("\(p)/x"), s), try fx.floats("\(p)/windows"), "\(name) partition")
            XCTAssertEqual(partitionGrad(try fx.floats("\(p)/grad_windows"), s, start: 0.5),
                           try fx.floats("\(p)/d_x").map { $0 + 0.5 }, "\(name) partition backward")
            XCTAssertEqual(unpartition(try fx.floats("\(u)/windows"), s), try fx.floats("\(u)/x"), "\(name) unpartition")
            XCTAssertEqual(unpartitionGrad(try fx.floats("\(u)/grad_x"), s, start: 0.5),
                           try fx.floats("\(u)/d_windows").map { $0 + 0.5 }, "\(name) unpartition backward")
        }
    }

    /// ViTDet's sizes: 64x64 tokens -> 70x70 -> 25 windows of 196 tokens per image.
    func testViTDetWindowSizes() {
        let s = WindowPartitionSize(batch: 2, height: 64, width: 64, channels: 768, window: 14)
        XCTAssertEqual([s.paddedHeight, s.paddedWidth, s.windowsPerImage, s.windows, s.windowTokens], [70, 70, 25, 50, 196])
    }

    /// Unpartition undoes partition; the padding reads zero (unmasked, as in detectron2).
    func testUnpartitionInvertsPartitionAndPaddingIsZero() {
        var rng = TestRandom(seed: 61)
        let s = WindowPartitionSize(batch: 2, height: 9, width: 6, channels: 3, window: 4)
        let x = rng.array(s.batch * s.height * s.width * s.channels)
        let w = partition(x, s)
        XCTAssertEqual(unpartition(w, s), x)
        XCTAssertEqual(w.filter { $0 == 0 }.count, s.windows * s.windowTokens * s.channels - x.count,
                       "one zero per padded element")
    }

    /// Central differences of sum(f(x) * r) for both directions (linear, so only rounding remains):
    /// rtol 1e-2 atol 1e-3 on every coordinate.
    func testWindowGradientsMatchFiniteDifferences() {
        var rng = TestRandom(seed: 62)
        let s = WindowPartitionSize(batch: 2, height: 5, width: 3, channels: 2, window: 4)
        let x = rng.array(s.batch * s.height * s.width * s.channels)
        let rw = rng.array(s.windows * s.windowTokens * s.channels)
        assertClose(partitionGrad(rw, s), numericGradient(x, step: 1e-2) { dot(partition($0, s), rw) },
                    rtol: 1e-2, atol: 1e-3, "partition")
        let w = rng.array(rw.count), rx = rng.array(x.count)
        assertClose(unpartitionGrad(rx, s), numericGradient(w, step: 1e-2) { dot(unpartition($0, s), rx) },
                    rtol: 1e-2, atol: 1e-3, "unpartition")
    }

    /// With a padding row, every padded token of the partition is that row and the real ones are
    /// as without it; the padding row's gradient is the sum of the padded tokens' (against central
    /// differences, rtol 1e-2 atol 1e-3), accumulated onto what dPadding held.
    func testPaddingRowAndItsGradient() {
        var rng = TestRandom(seed: 63)
        let s = WindowPartitionSize(batch: 2, height: 5, width: 6, channels: 3, window: 4)
        let x = rng.array(s.batch * s.height * s.width * s.channels), pad = rng.array(s.channels)
        func padded(_ x: [Float], _ pad: [Float]) -> [Float] {
            var w = [Float](repeating: .nan, count: s.windows * s.windowTokens * s.channels)
            windowPartitionForward(windows: &w, input: x, size: s, padding: pad)
            return w
        }
        let w = padded(x, pad), plain = partition(x, s)
        var paddedTokens = 0
        for t in 0..<(w.count / s.channels) {
            let row = Array(w[t * s.channels..<(t + 1) * s.channels])
            let plainRow = Array(plain[t * s.channels..<(t + 1) * s.channels])
            if plainRow.allSatisfy({ $0 == 0 }) {
                XCTAssertEqual(row, pad, "padded token \(t)")
                paddedTokens += 1
            } else {
                XCTAssertEqual(row, plainRow, "token \(t)")
            }
        }
        XCTAssertEqual(paddedTokens, s.windows * s.windowTokens - s.batch * s.height * s.width)
        let r = rng.array(w.count)
        var dPad = [Float](repeating: 0.5, count: s.channels)
        windowPaddingBackward(dPadding: &dPad, dWindows: r, size: s)
        assertClose(dPad.map { $0 - 0.5 }, numericGradient(pad, step: 1e-2) { dot(padded(x, $0), r) },
                    rtol: 1e-2, atol: 1e-3, "dPadding")
    }
}
