import MAEKernels
import TestSupport
import XCTest

/// The bf16 path (`Precision.bf16`): rounding, every backend this CPU runs (our vdpbf16ps kernel,
/// oneDNN, the sgemm fallback) against fp64 references on the bf16-rounded operands (fp32 accumulation:
/// ~1e-6 relative), the linear layer against fp32 (the bf16 rounding level, ~1e-2 of the max), and the
/// weight packs' versioning.
final class BF16MatmulTests: XCTestCase {
    private func rounded(_ x: [Float]) -> [Float] { x.map { floatFromBF16(bf16Bits($0)) } }

    /// Largest |a - e| over the largest |e|.
    private func relativeToMax(_ a: [Float], _ e: [Double]) -> Double {
        let err = zip(a, e).map { abs(Double($0) - $1) }.max() ?? 0
        return err / (e.map(abs).max() ?? 1)
    }

    func testRoundingIsNearestEvenAsTorch() {
        XCTAssertEqual(bf16Bits(1), 0x3F80)
        // 1 + 2^-8 is halfway between bf16 1 and 1 + 2^-7: ties go to the even mantissa (1).
        XCTAssertEqual(bf16Bits(1 + 0x1p-8), 0x3F80)
        // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6: rounds up to the even one.
        XCTAssertEqual(bf16Bits(1 + 3 * 0x1p-8), 0x3F82)
        XCTAssertEqual(bf16Bits(-2.5), 0xC020)
        XCTAssertTrue(floatFromBF16(bf16Bits(.nan)).isNaN)
        XCTAssertEqual(floatFromBF16(bf16Bits(.infinity)), .infinity)
        XCTAssertEqual(floatFromBF16(bf16Bits(Float.greatestFiniteMagnitude)), .infinity)
        // The vector conversion agrees with the scalar one on every element, NaN included.
        var x = randomValues(1000, seed: 3, scale: 100)
        x[17] = .nan; x[900] = -.infinity; x[901] = 1 + 0x1p-8
        var out = [UInt16](repeating: 0, count: x.count)
        x.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { convertToBF16(out: $0.baseAddress!, input: src.baseAddress!, count: x.count) }
        }
        XCTAssertEqual(out, x.map(bf16Bits))
    }

    private struct Layer {
        let rows: Int, inDim: Int, outDim: Int
        let x: [Float], w: [Float], b: [Float], dOut: [Float]
        /// 37 x 96 -> 80 runs as one product; 301 x 96 -> 160 (above 2^21 multiply-adds) in row slices.
        init(rows: Int = 37, inDim: Int = 96, outDim: Int = 80) {
            self.rows = rows; self.inDim = inDim; self.outDim = outDim
            x = randomValues(rows * inDim, seed: 1); w = randomValues(outDim * inDim, seed: 2, scale: 0.1)
            b = randomValues(outDim, seed: 4); dOut = randomValues(rows * outDim, seed: 5)
        }
    }

    private func forward(_ l: Layer, bf16: BF16WeightCache?) -> [Float] {
        var out = [Float](repeating: 0, count: l.rows * l.outDim)
        linearForward(out: &out, input: l.x, weight: l.w, bias: l.b, rows: l.rows, inDim: l.inDim, outDim: l.outDim,
                      bf16: bf16)
        return out
    }

    private func backward(_ l: Layer, bf16: BF16WeightCache?) -> (dx: [Float], dw: [Float], db: [Float]) {
        var dx = [Float](repeating: 0.5, count: l.x.count), dw = [Float](repeating: -0.25, count: l.w.count)
        var db = [Float](repeating: 0, count: l.b.count)
        linearBackward(dInput: &dx, dWeight: &dw, dBias: &db, dOut: l.dOut, input: l.x, weight: l.w,
                       rows: l.rows, inDim: l.inDim, outDim: l.outDim, bf16: bf16)
        return (dx, dw, db)
    }

    func testLinearMatchesFP64OnRoundedOperandsOnEveryBackend() {
        let best = BF16Matmul.backend, workers = Parallel.workers
        defer { BF16Matmul.backend = best; Parallel.workers = workers }
        XCTAssertEqual(best, BF16Matmul.Backend.best)
        if CPUFeatures.current.avx512BF16 { XCTAssertTrue(BF16Matmul.Backend.available.contains(.vdpbf16ps)) }
        for backend in BF16Matmul.Backend.available {
            BF16Matmul.backend = backend
            Parallel.workers = workers
            checkAgainstFP64(Layer(), backend)
            // An odd K and an odd row count (pads of the pairs), one partial tile and one partial panel.
            checkAgainstFP64(Layer(rows: 13, inDim: 7, outDim: 5), backend)
            // Split over 3 workers: uneven row slices of C, of dInput and of dWeight (column blocks of dOut).
            Parallel.workers = 3
            checkAgainstFP64(Layer(rows: 301, inDim: 96, outDim: 160), backend)
            checkAgainstFP64(Layer(rows: 197, inDim: 131, outDim: 203), backend)
        }
    }

    private func checkAgainstFP64(_ l: Layer, _ backend: BF16Matmul.Backend, file: StaticString = #filePath, line: UInt = #line) {
        let x = rounded(l.x), w = rounded(l.w), g = rounded(l.dOut)
        var y = [Double](repeating: 0, count: l.rows * l.outDim)
        var dx = [Double](repeating: 0.5, count: l.x.count), dw = [Double](repeating: -0.25, count: l.w.count)
        for r in 0..<l.rows {
            for o in 0..<l.outDim {
                var s = Double(l.b[o])
                for i in 0..<l.inDim { s += Double(x[r * l.inDim + i]) * Double(w[o * l.inDim + i]) }
                y[r * l.outDim + o] = s
                for i in 0..<l.inDim {
                    dx[r * l.inDim + i] += Double(g[r * l.outDim + o]) * Double(w[o * l.inDim + i])
                    dw[o * l.inDim + i] += Double(g[r * l.outDim + o]) * Double(x[r * l.inDim + i])
                }
            }
        }
        let cache = BF16WeightCache()
        let out = forward(l, bf16: cache), grads = backward(l, bf16: cache)
        // fp32 accumulation of exact bf16 products: the error is fp32 rounding, not bf16's.
        let what = "\(backend), \(l.rows) x \(l.inDim) -> \(l.outDim)"
        XCTAssertLessThan(relativeToMax(out, y), 2e-6, "forward, \(what)", file: file, line: line)
        XCTAssertLessThan(relativeToMax(grads.dx, dx), 2e-6, "dInput (+= on 0.5), \(what)", file: file, line: line)
        XCTAssertLessThan(relativeToMax(grads.dw, dw), 2e-6, "dWeight (+= on -0.25), \(what)", file: file, line: line)
        XCTAssertEqual(grads.db, backward(l, bf16: nil).db, "dBias stays an fp32 sum, \(what)", file: file, line: line)
    }

    func testLinearUnderBF16IsWithinBF16RoundingOfFP32() {
        let l = Layer(), cache = BF16WeightCache()
        let pairs: [(String, [Float], [Float])] = [
            ("forward", forward(l, bf16: cache), forward(l, bf16: nil)),
            ("dInput", backward(l, bf16: cache).dx, backward(l, bf16: nil).dx),
            ("dWeight", backward(l, bf16: cache).dw, backward(l, bf16: nil).dw),
        ]
        for (name, bf, fp) in pairs {
            let err = relativeToMax(bf, fp.map(Double.init))
            // bf16 keeps 8 mantissa bits (2^-9 relative per operand): ~1e-2 of the max at worst.
            XCTAssertLessThan(err, 1e-2, name)
            // and the products really ran in bf16 (fp32 would agree to ~1e-6).
            XCTAssertGreaterThan(err, 1e-4, name)
        }
    }

    func testWeightsArePackedOncePerVersionAndRepackedAfterAChange() {
        var l = Layer()
        let cache = BF16WeightCache()
        let first = forward(l, bf16: cache)
        _ = forward(l, bf16: cache)
        XCTAssertEqual(cache.packCount, 1, "one pack for one weight version")
        XCTAssertEqual(forward(l, bf16: cache), first)
        // New weights in the same buffer: without weightsChanged() the stale pack would be used.
        l = Layer()
        var w = l.w.map { -$0 }
        cache.weightsChanged()
        var out = [Float](repeating: 0, count: l.rows * l.outDim)
        w.withUnsafeMutableBufferPointer { wp in
            linearForward(out: &out, input: l.x, weight: wp.baseAddress!, bias: nil, rows: l.rows, inDim: l.inDim,
                          outDim: l.outDim, bf16: cache)
            XCTAssertEqual(cache.packCount, 2)
            for i in wp.indices { wp[i] = -wp[i] }
            cache.weightsChanged()
            var again = [Float](repeating: 0, count: out.count)
            linearForward(out: &again, input: l.x, weight: wp.baseAddress!, bias: nil, rows: l.rows, inDim: l.inDim,
                          outDim: l.outDim, bf16: cache)
            XCTAssertEqual(cache.packCount, 3)
            for i in out.indices { XCTAssertEqual(again[i], -out[i], "negated weights give the negated product") }
        }
    }

    func testLibraryReportsItsVersionAndISA() {
        let best = BF16Matmul.backend
        defer { BF16Matmul.backend = best }
        for backend in BF16Matmul.Backend.available {
            BF16Matmul.backend = backend
            let info = BF16Info.current
            switch backend {
            case .vdpbf16ps:
                XCTAssertEqual(info.summary, "mae-eval built-in, ISA avx512_bf16, kernel vdpbf16ps 6x64")
            case .oneDNN, .sgemmFallback:
                XCTAssertEqual(info.library, "oneDNN")
                XCTAssertTrue(info.version.hasPrefix("2."), info.version)
                XCTAssertFalse(info.isa.hasPrefix("isa 0x"), info.isa)
                XCTAssertNotEqual(info.kernel, "unknown")
            }
        }
    }

    /// Our kernel where the CPU has AVX512-BF16 and no AMX (Zen 4 / 5); oneDNN on AMX.
    func testBestBackendFitsTheCPU() {
        let amx = BF16Info.current.isa.contains("amx")
        if CPUFeatures.current.avx512BF16 && !amx { XCTAssertEqual(BF16Matmul.Backend.best, .vdpbf16ps) }
        if amx { XCTAssertEqual(BF16Matmul.Backend.best, .oneDNN) }
        if !CPUFeatures.current.avx512 { XCTAssertEqual(BF16Matmul.Backend.best, .sgemmFallback) }
    }
}

/// Attention's per-head bf16 products (`BF16Matmul.serialProduct`, `attentionForward(bf16:)`) where our
/// kernel runs: exact products of the rounded operands, and the attention at bf16's rounding level.
final class BF16AttentionTests: XCTestCase {
    override func setUpWithError() throws {
        try XCTSkipUnless(BF16Matmul.Backend.available.contains(.vdpbf16ps), "no AVX512-BF16 on this CPU")
    }

    private func rounded(_ x: Float) -> Double { Double(floatFromBF16(bf16Bits(x))) }

    func testSerialProductMatchesFP64OnRoundedOperandsInBothLayouts() {
        // 197 x 37 . (37 x 70): an odd K, a partial tile and a partial panel; B (K,N) or stored (N,K).
        let m = 197, k = 37, n = 70, lda = 41, ldb = 75, ldc = 73
        let a = randomValues(m * lda, seed: 1), b = randomValues(max(k, n) * ldb, seed: 2)
        for transposed in [false, true] {
            var c = [Float](repeating: .nan, count: m * ldc)
            BF16Matmul.serialProduct(c: &c, ldc: ldc, a: a, lda: lda, b: b, ldb: ldb, bTransposed: transposed,
                                     m: m, k: k, n: n, scratch: BF16Scratch())
            var err = 0.0, top = 0.0
            for i in 0..<m {
                for j in 0..<n {
                    var s = 0.0
                    for t in 0..<k { s += rounded(a[i * lda + t]) * rounded(transposed ? b[j * ldb + t] : b[t * ldb + j]) }
                    err = max(err, abs(Double(c[i * ldc + j]) - s)); top = max(top, abs(s))
                }
            }
            XCTAssertLessThan(err / top, 2e-6, "B transposed \(transposed)")
        }
    }

    func testBF16AttentionIsAtTheRoundingLevelOfFP32() {
        let (b, n, d, h) = (2, 50, 64, 4)
        let qkv = randomValues(b * n * 3 * d, seed: 3), bias = randomValues(h * n * n, seed: 4, scale: 0.5)
        func run(_ bf16: Bool) -> [Float] {
            var out = [Float](repeating: 0, count: b * n * d), probs = [Float](repeating: 0, count: b * h * n * n)
            attentionForward(out: &out, probs: &probs, qkv: qkv, bias: bias, batch: b, tokens: n, width: d, heads: h, bf16: bf16)
            return out
        }
        let bf = run(true), fp = run(false)
        let err = zip(bf, fp).map { abs($0 - $1) }.max()!, top = fp.map(abs).max()!
        XCTAssertLessThan(err / top, 2e-2, "bf16 keeps 8 mantissa bits")
        XCTAssertGreaterThan(err / top, 1e-5, "the products really ran in bf16")
    }
}

extension BF16AttentionTests {
    func testBF16AttentionGradientsAreAtTheRoundingLevelOfFP32() {
        let (b, n, d, h) = (2, 37, 32, 2)
        let qkv = randomValues(b * n * 3 * d, seed: 5), dOut = randomValues(b * n * d, seed: 6)
        func grads(_ bf16: Bool) -> [Float] {
            var out = [Float](repeating: 0, count: b * n * d), probs = [Float](repeating: 0, count: b * h * n * n)
            attentionForward(out: &out, probs: &probs, qkv: qkv, batch: b, tokens: n, width: d, heads: h, bf16: bf16)
            var dQKV = [Float](repeating: 0.25, count: qkv.count)
            attentionBackward(dQKV: &dQKV, dOut: dOut, qkv: qkv, probs: probs, batch: b, tokens: n, width: d, heads: h, bf16: bf16)
            return dQKV.map { $0 - 0.25 }
        }
        let bf = grads(true), fp = grads(false)
        // q, k and v parts separately: each is its own product chain.
        for part in 0..<3 {
            let pick = { (g: [Float]) in g.indices.filter { ($0 % (3 * d)) / d == part }.map { g[$0] } }
            let a = pick(bf), e = pick(fp)
            let err = zip(a, e).map { abs($0 - $1) }.max()!, top = e.map(abs).max()!
            XCTAssertLessThan(err / top, 3e-2, "part \(part): bf16 keeps 8 mantissa bits")
            XCTAssertGreaterThan(err / top, 1e-5, "part \(part): the products really ran in bf16")
        }
    }
}
