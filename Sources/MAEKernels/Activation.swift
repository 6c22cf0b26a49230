import CAVX512

/// Whether `geluForward` runs CAVX512's AVX-512 C loop (bit-identical, half the time of the AVX2
/// Swift loop on Zen 5); CPUs without AVX-512 run the Swift loop. Tests switch it to compare the two.
nonisolated(unsafe) var geluAVX512 = CPUFeatures.current.avx512

/// Exact GELU, x * Phi(x) with Phi the normal CDF through erf (MAE's nn.GELU default, not the
/// tanh approximation). out (n), input (n); `out` may alias `input`.
public func geluForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, count: Int) {
    Profiler.measure(.gelu) {
        Parallel.forRanges(count, grain: 1 << 14) { range in
            if geluAVX512 {
                mae_gelu_forward(out + range.lowerBound, input + range.lowerBound, range.count)
                return
            }
            var i = range.lowerBound
            while i + 16 <= range.upperBound {
                let x = load16(input + i)
                store16(x * normalCDF16(x), out + i)
                i += 16
            }
            if i < range.upperBound {
                let n = range.upperBound - i, x = loadPartial(input + i, n)
                storePartial(x * normalCDF16(x), out + i, n)
            }
        }
    }
}

/// Accumulates: dInput (n) += dOut (n) * GELU'(input), GELU'(x) = Phi(x) + x phi(x).
public func geluBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                         input: UnsafePointer<Float>, count: Int) {
    Profiler.measure(.gelu) {
        Parallel.forRanges(count, grain: 1 << 14) { range in
            var i = range.lowerBound
            let end = range.upperBound
            @inline(__always) func derivative(_ x: Vec16) -> Vec16 {
                let pdf = exp16(x * x * -0.5) * 0.39894228040143268
                return fma16(x, pdf, normalCDF16(x))
            }
            while i + 16 <= end {
                store16(fma16(load16(dOut + i), derivative(load16(input + i)), load16(dInput + i)), dInput + i)
                i += 16
            }
            if i < end {
                let n = end - i
                let v = fma16(loadPartial(dOut + i, n), derivative(loadPartial(input + i, n)), loadPartial(dInput + i, n))
                storePartial(v, dInput + i, n)
            }
        }
    }
}
