// Bilinear and bicubic resizing of NCHW float32 planes, as torch.nn.functional.interpolate with
// `size=` given (mode "bilinear" / "bicubic", antialias off). Both are separable: each axis gets a
// table of taps (input index, weight) per output position, and the 2-D value is the tensor product.
// The backward scatters the output gradient through the same taps, so it is the exact adjoint.

/// out (B,C,OH,OW), input (B,C,H,W). Writes `out`.
/// Source coordinate as torch: align_corners true maps corner pixel centres onto each other
/// (src = o (H-1)/(OH-1)); false maps pixel areas (src = (o + 0.5) H/OH - 0.5, negatives clamped to 0).
public func resizeBilinearForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                                  size s: Resample2dSize, alignCorners: Bool) {
    resampleForward(out, input, s,
                    rows: .linear(in: s.height, out: s.outHeight, alignCorners: alignCorners),
                    cols: .linear(in: s.width, out: s.outWidth, alignCorners: alignCorners))
}

/// dInput (B,C,H,W), dOut (B,C,OH,OW). Accumulates into dInput.
public func resizeBilinearBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                   size s: Resample2dSize, alignCorners: Bool) {
    resampleBackward(dInput, dOut, s,
                     rows: .linear(in: s.height, out: s.outHeight, alignCorners: alignCorners),
                     cols: .linear(in: s.width, out: s.outWidth, alignCorners: alignCorners))
}

/// out (B,C,OH,OW), input (B,C,H,W). Writes `out`.
/// torch's upsample_bicubic2d: Keys cubic convolution with A = -0.75 over 4 taps per axis, source
/// coordinate as in bilinear but not clamped, tap indices clamped to the border (replicate edge).
public func resizeBicubicForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                                 size s: Resample2dSize, alignCorners: Bool) {
    resampleForward(out, input, s,
                    rows: .cubic(in: s.height, out: s.outHeight, alignCorners: alignCorners),
                    cols: .cubic(in: s.width, out: s.outWidth, alignCorners: alignCorners))
}

/// dInput (B,C,H,W), dOut (B,C,OH,OW). Accumulates into dInput.
public func resizeBicubicBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                  size s: Resample2dSize, alignCorners: Bool) {
    resampleBackward(dInput, dOut, s,
                     rows: .cubic(in: s.height, out: s.outHeight, alignCorners: alignCorners),
                     cols: .cubic(in: s.width, out: s.outWidth, alignCorners: alignCorners))
}

// MARK: - Taps

/// Interpolation taps along one axis: output position o reads input index[o taps + t] with
/// weight[o taps + t], for t in 0..<taps. Indices are already clamped into the input.
final class InterpolationTaps {
    let taps: Int
    let index: UnsafeMutablePointer<Int>
    let weight: UnsafeMutablePointer<Float>

    private init(taps: Int, outSize: Int) {
        self.taps = taps
        index = .allocate(capacity: taps * outSize)
        weight = .allocate(capacity: taps * outSize)
    }

    deinit { index.deallocate(); weight.deallocate() }

    /// torch's area_pixel_compute_scale for a size-given resize, in float as torch computes it.
    private static func scale(in n: Int, out m: Int, alignCorners: Bool) -> Float {
        alignCorners ? (m > 1 ? Float(n - 1) / Float(m - 1) : 0) : Float(n) / Float(m)
    }

    /// torch's area_pixel_compute_source_index; `cubic` keeps negative coordinates.
    private static func source(_ o: Int, scale: Float, alignCorners: Bool, cubic: Bool) -> Float {
        if alignCorners { return scale * Float(o) }
        let src = scale * (Float(o) + 0.5) - 0.5
        return !cubic && src < 0 ? 0 : src
    }

    /// floor of the source coordinate (kept inside the input) and the fraction past it in [0, 1],
    /// as torch's guard_index_and_lambda.
    private static func split(_ src: Float, size n: Int) -> (Int, Float) {
        let i = min(Int(src.rounded(.down)), n - 1)
        return (i, min(max(src - Float(i), 0), 1))
    }

    static func linear(in n: Int, out m: Int, alignCorners: Bool) -> InterpolationTaps {
        let t = InterpolationTaps(taps: 2, outSize: m)
        let scale = scale(in: n, out: m, alignCorners: alignCorners)
        for o in 0..<m {
            let (i0, lambda) = n == m ? (o, 0) : split(source(o, scale: scale, alignCorners: alignCorners,
                                                              cubic: false), size: n)
            t.index[2 * o] = i0
            t.index[2 * o + 1] = i0 < n - 1 ? i0 + 1 : i0
            t.weight[2 * o] = 1 - lambda
            t.weight[2 * o + 1] = lambda
        }
        return t
    }

    static func cubic(in n: Int, out m: Int, alignCorners: Bool) -> InterpolationTaps {
        let t = InterpolationTaps(taps: 4, outSize: m)
        let scale = scale(in: n, out: m, alignCorners: alignCorners)
        for o in 0..<m {
            let (i, x) = split(source(o, scale: scale, alignCorners: alignCorners, cubic: true), size: n)
            let w = cubicWeights(x)
            for k in 0..<4 {
                t.index[4 * o + k] = min(max(i - 1 + k, 0), n - 1)
                t.weight[4 * o + k] = w[k]
            }
        }
        return t
    }

    /// Keys' cubic convolution weights (A = -0.75) of the taps at distances 1 + x, x, 1 - x, 2 - x,
    /// written as torch's get_cubic_upsample_coefficients so the float rounding matches.
    static func cubicWeights(_ x: Float) -> [Float] {
        let a: Float = -0.75
        func near(_ d: Float) -> Float { ((a + 2) * d - (a + 3)) * d * d + 1 }  // |d| <= 1
        func far(_ d: Float) -> Float { ((a * d - 5 * a) * d + 8 * a) * d - 4 * a }  // 1 < |d| < 2
        return [far(x + 1), near(x), near(1 - x), far(2 - x)]
    }
}

// MARK: - Separable resampling

/// out (B,C,OH,OW) = rows (OH,H) * input plane (H,W) * cols (OW,W)^T, plane by plane, in two
/// passes: along each input row into tmp (H,OW), then down the columns, a contiguous multiply-add
/// of whole rows. Each output sums its column taps first, as torch does. Writes `out`.
private func resampleForward(_ out: UnsafeMutablePointer<Float>, _ input: UnsafePointer<Float>,
                             _ s: Resample2dSize, rows: InterpolationTaps, cols: InterpolationTaps) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth, ow = s.outWidth
    let ty = rows.taps, tx = cols.taps
    let iy = rows.index, wy = rows.weight, ix = cols.index, wx = cols.weight
    withExtendedLifetime((rows, cols)) {
        Parallel.forRanges(s.planes) { planes in
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: s.height * ow)
            defer { tmp.deallocate() }
            for p in planes {
                let x = input + p * inPlane, y = out + p * outPlane
                for h in 0..<s.height {
                    let row = x + h * s.width, t = tmp + h * ow
                    for j in 0..<ow {
                        var r: Float = 0
                        for b in 0..<tx { r += wx[j * tx + b] * row[ix[j * tx + b]] }
                        t[j] = r
                    }
                }
                for oh in 0..<s.outHeight {
                    let d = y + oh * ow
                    let w0 = wy[oh * ty], t0 = tmp + iy[oh * ty] * ow
                    for j in 0..<ow { d[j] = w0 * t0[j] }
                    for a in 1..<ty {
                        let wa = wy[oh * ty + a], ta = tmp + iy[oh * ty + a] * ow
                        for j in 0..<ow { d[j] += wa * ta[j] }
                    }
                }
            }
        }
    }
}

/// dInput (B,C,H,W) += rows^T * dOut plane * cols: the adjoint of `resampleForward`, its two
/// passes in reverse (dOut rows gathered into dTmp (H,OW), then scattered along each input row).
private func resampleBackward(_ dInput: UnsafeMutablePointer<Float>, _ dOut: UnsafePointer<Float>,
                              _ s: Resample2dSize, rows: InterpolationTaps, cols: InterpolationTaps) {
    let inPlane = s.height * s.width, outPlane = s.outHeight * s.outWidth, ow = s.outWidth
    let ty = rows.taps, tx = cols.taps
    let iy = rows.index, wy = rows.weight, ix = cols.index, wx = cols.weight
    withExtendedLifetime((rows, cols)) {
        Parallel.forRanges(s.planes) { planes in
            let tmp = UnsafeMutablePointer<Float>.allocate(capacity: s.height * ow)
            defer { tmp.deallocate() }
            for p in planes {
                let dx = dInput + p * inPlane, g = dOut + p * outPlane
                tmp.update(repeating: 0, count: s.height * ow)
                for oh in 0..<s.outHeight {
                    let gRow = g + oh * ow
                    for a in 0..<ty {
                        let wa = wy[oh * ty + a], ta = tmp + iy[oh * ty + a] * ow
                        for j in 0..<ow { ta[j] += wa * gRow[j] }
                    }
                }
                for h in 0..<s.height {
                    let row = dx + h * s.width, t = tmp + h * ow
                    for j in 0..<ow {
                        let v = t[j]
                        for b in 0..<tx { row[ix[j * tx + b]] += wx[j * tx + b] * v }
                    }
                }
            }
        }
    }
}
