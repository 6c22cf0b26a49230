// 2-D convolution and transposed convolution (groups = 1), NCHW, float32, as torch.nn.Conv2d and
// torch.nn.ConvTranspose2d. Both lower to im2col / col2im plus one matrix product per image; the
// product is split over our workers by `BLAS.gemm`, and im2col / col2im over channels, so a batch of
// one uses every core as well as a large batch does. The column matrix is built a band of output rows
// at a time (see `convColumnBudget`), so its buffer stays small.

/// Floats in one im2col band (8 MB). A buffer this size is recycled by malloc rather than mapped and
/// page-faulted afresh on every call: a whole 256-channel 64x64 3x3 column matrix is 38 MB, past
/// glibc's 32 MB mmap threshold, and building it whole took 132 ms of CPU for a batch of two against
/// 112 ms banded (the products alone: 104 ms). Tests lower it to exercise banding on small shapes.
nonisolated(unsafe) var convColumnBudget = 1 << 21

/// Sizes of a convolution: input (B,C,H,W), weight (OC,C,KH,KW), output (B,OC,OH,OW), with
/// OH = (H + 2 padH - dilationH (KH - 1) - 1) / strideH + 1 (floor), and likewise OW.
public struct Conv2dSize: Equatable {
    public var batch, inChannels, height, width, outChannels: Int
    public var kernelH, kernelW, strideH, strideW, padH, padW, dilationH, dilationW: Int

    /// Pairs are (height, width), in torch's order.
    public init(batch: Int, inChannels: Int, height: Int, width: Int, outChannels: Int,
                kernel: (Int, Int), stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0),
                dilation: (Int, Int) = (1, 1)) {
        self.batch = batch; self.inChannels = inChannels; self.height = height; self.width = width
        self.outChannels = outChannels
        (kernelH, kernelW) = kernel; (strideH, strideW) = stride
        (padH, padW) = padding; (dilationH, dilationW) = dilation
        precondition(kernelH > 0 && kernelW > 0 && strideH > 0 && strideW > 0 && dilationH > 0 && dilationW > 0
                     && padH >= 0 && padW >= 0, "bad convolution geometry \(self)")
        precondition(outHeight > 0 && outWidth > 0, "convolution output would be empty: \(self)")
    }

    public var outHeight: Int { (height + 2 * padH - dilationH * (kernelH - 1) - 1) / strideH + 1 }
    public var outWidth: Int { (width + 2 * padW - dilationW * (kernelW - 1) - 1) / strideW + 1 }

    var window: ConvWindow {
        ConvWindow(channels: inChannels, height: height, width: width, kernelH: kernelH, kernelW: kernelW,
                   strideH: strideH, strideW: strideW, padH: padH, padW: padW,
                   dilationH: dilationH, dilationW: dilationW, outH: outHeight, outW: outWidth)
    }

    /// A 1x1, stride-1, unpadded convolution is a plain matrix product: im2col would copy the input.
    var isPointwise: Bool { kernelH == 1 && kernelW == 1 && strideH == 1 && strideW == 1 && padH == 0 && padW == 0 }
}

/// out (B,OC,OH,OW), input (B,C,H,W), weight (OC,C,KH,KW), bias (OC) or nil. Writes `out`.
public func conv2dForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?, size s: Conv2dSize) {
    let w = s.window
    let rows = w.rows, cols = w.outH * w.outW, inPlane = s.inChannels * s.height * s.width
    let bands = w.bands
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: s.isPointwise ? 1 : rows * bands[0].count * w.outW)
    defer { scratch.deallocate() }
    let beta: Float = bias == nil ? 0 : 1
    for b in 0..<s.batch {
        let x = input + b * inPlane, y = out + b * s.outChannels * cols
        fillRows(y, bias, rows: s.outChannels, width: cols)
        if s.isPointwise {
            // y (OC, L) = weight (OC, C) * x (C, L) [+ bias]: the input is its own column matrix.
            BLAS.gemm(m: s.outChannels, n: cols, k: rows, a: weight, lda: rows, b: x, ldb: cols,
                      beta: beta, c: y, ldc: cols)
            continue
        }
        for band in bands {
            let n = band.count * w.outW
            im2col(scratch, x, w, outRows: band)
            // y[:, band] (OC, n) = weight (OC, C KH KW) * columns (C KH KW, n) [+ bias]
            BLAS.gemm(m: s.outChannels, n: n, k: rows, a: weight, lda: rows, b: scratch, ldb: n,
                      beta: beta, c: y + band.lowerBound * w.outW, ldc: cols)
        }
    }
}

/// dInput (B,C,H,W) or nil, dWeight (OC,C,KH,KW), dBias (OC) or nil, dOut (B,OC,OH,OW),
/// input (B,C,H,W), weight (OC,C,KH,KW). Accumulates into the gradients.
public func conv2dBackward(dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                           dBias: UnsafeMutablePointer<Float>?, dOut: UnsafePointer<Float>,
                           input: UnsafePointer<Float>, weight: UnsafePointer<Float>, size s: Conv2dSize) {
    let w = s.window
    let rows = w.rows, cols = w.outH * w.outW, inPlane = s.inChannels * s.height * s.width
    if s.isPointwise {
        pointwiseBackward(dInput: dInput, dWeight: dWeight, dBias: dBias, dOut: dOut, input: input, weight: weight,
                          size: s)
        return
    }
    let bands = w.bands
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rows * bands[0].count * w.outW)
    defer { scratch.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * inPlane, g = dOut + b * s.outChannels * cols
        if let dBias { sumRows(dBias, g, rows: s.outChannels, width: cols) }
        for band in bands {
            let n = band.count * w.outW, gBand = g + band.lowerBound * w.outW
            im2col(scratch, x, w, outRows: band)
            // dWeight (OC, C KH KW) += g[:, band] (OC, n) * columns^T (n, C KH KW)
            BLAS.gemm(transB: true, m: s.outChannels, n: rows, k: n, a: gBand, lda: cols, b: scratch, ldb: n,
                      beta: 1, c: dWeight, ldc: rows)
            guard let dInput else { continue }
            // dColumns (C KH KW, n) = weight^T (C KH KW, OC) * g[:, band] (OC, n), folded back onto the image.
            BLAS.gemm(transA: true, m: rows, n: n, k: s.outChannels, a: weight, lda: rows, b: gBand, ldb: cols,
                      c: scratch, ldc: n)
            col2im(dInput + b * inPlane, scratch, w, outRows: band)
        }
    }
}

/// conv2dBackward for a 1x1, stride-1, unpadded convolution: the input is its own column matrix.
private func pointwiseBackward(dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                               dBias: UnsafeMutablePointer<Float>?, dOut: UnsafePointer<Float>,
                               input: UnsafePointer<Float>, weight: UnsafePointer<Float>, size s: Conv2dSize) {
    let c = s.inChannels, oc = s.outChannels, l = s.height * s.width
    for b in 0..<s.batch {
        let x = input + b * c * l, g = dOut + b * oc * l
        if let dBias { sumRows(dBias, g, rows: oc, width: l) }
        // dWeight (OC, C) += g (OC, L) * x^T (L, C); dInput (C, L) += weight^T (C, OC) * g (OC, L)
        BLAS.gemm(transB: true, m: oc, n: c, k: l, a: g, lda: l, b: x, ldb: l, beta: 1, c: dWeight, ldc: c)
        if let dInput {
            BLAS.gemm(transA: true, m: c, n: l, k: oc, a: weight, lda: c, b: g, ldb: l, beta: 1,
                      c: dInput + b * c * l, ldc: l)
        }
    }
}

/// Sizes of a transposed convolution (the adjoint of `Conv2dSize`'s convolution with in and out
/// swapped): input (B,C,H,W), weight (C,OC,KH,KW) as torch stores it, output (B,OC,OH,OW) with
/// OH = (H - 1) strideH - 2 padH + dilationH (KH - 1) + outputPadH + 1, and likewise OW.
public struct ConvTranspose2dSize: Equatable {
    public var batch, inChannels, height, width, outChannels: Int
    public var kernelH, kernelW, strideH, strideW, padH, padW, outputPadH, outputPadW, dilationH, dilationW: Int

    /// Pairs are (height, width), in torch's order.
    public init(batch: Int, inChannels: Int, height: Int, width: Int, outChannels: Int,
                kernel: (Int, Int), stride: (Int, Int) = (1, 1), padding: (Int, Int) = (0, 0),
                outputPadding: (Int, Int) = (0, 0), dilation: (Int, Int) = (1, 1)) {
        self.batch = batch; self.inChannels = inChannels; self.height = height; self.width = width
        self.outChannels = outChannels
        (kernelH, kernelW) = kernel; (strideH, strideW) = stride; (padH, padW) = padding
        (outputPadH, outputPadW) = outputPadding; (dilationH, dilationW) = dilation
        precondition(kernelH > 0 && kernelW > 0 && strideH > 0 && strideW > 0 && dilationH > 0 && dilationW > 0
                     && padH >= 0 && padW >= 0, "bad transposed convolution geometry \(self)")
        // torch's rule: output padding must be smaller than either stride or dilation.
        precondition(outputPadH >= 0 && outputPadW >= 0
                     && (outputPadH < strideH || outputPadH < dilationH)
                     && (outputPadW < strideW || outputPadW < dilationW),
                     "output padding must be smaller than stride or dilation: \(self)")
        precondition(outHeight > 0 && outWidth > 0, "transposed convolution output would be empty: \(self)")
    }

    public var outHeight: Int { (height - 1) * strideH - 2 * padH + dilationH * (kernelH - 1) + outputPadH + 1 }
    public var outWidth: Int { (width - 1) * strideW - 2 * padW + dilationW * (kernelW - 1) + outputPadW + 1 }

    /// The window of the forward convolution this one is the adjoint of: it slides over the
    /// output (OC, OH, OW) and lands on the input grid (H, W).
    var window: ConvWindow {
        ConvWindow(channels: outChannels, height: outHeight, width: outWidth, kernelH: kernelH, kernelW: kernelW,
                   strideH: strideH, strideW: strideW, padH: padH, padW: padW,
                   dilationH: dilationH, dilationW: dilationW, outH: height, outW: width)
    }
}

/// out (B,OC,OH,OW), input (B,C,H,W), weight (C,OC,KH,KW), bias (OC) or nil. Writes `out`.
public func convTranspose2dForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                                   weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                                   size s: ConvTranspose2dSize) {
    let w = s.window
    let rows = w.rows, cols = s.height * s.width, outPlane = s.outHeight * s.outWidth
    let bands = w.bands
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rows * bands[0].count * s.width)
    defer { scratch.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * s.inChannels * cols, y = out + b * s.outChannels * outPlane
        if bias == nil { y.update(repeating: 0, count: s.outChannels * outPlane) }
        fillRows(y, bias, rows: s.outChannels, width: outPlane)
        for band in bands {
            let n = band.count * s.width
            // columns (OC KH KW, n) = weight^T (OC KH KW, C) * x[:, band] (C, n), then folded onto y.
            BLAS.gemm(transA: true, m: rows, n: n, k: s.inChannels, a: weight, lda: rows,
                      b: x + band.lowerBound * s.width, ldb: cols, c: scratch, ldc: n)
            col2im(y, scratch, w, outRows: band)
        }
    }
}

/// dInput (B,C,H,W) or nil, dWeight (C,OC,KH,KW), dBias (OC) or nil, dOut (B,OC,OH,OW),
/// input (B,C,H,W), weight (C,OC,KH,KW). Accumulates into the gradients.
public func convTranspose2dBackward(dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                                    dBias: UnsafeMutablePointer<Float>?, dOut: UnsafePointer<Float>,
                                    input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                    size s: ConvTranspose2dSize) {
    let w = s.window
    let rows = w.rows, cols = s.height * s.width, outPlane = s.outHeight * s.outWidth
    let bands = w.bands
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rows * bands[0].count * s.width)
    defer { scratch.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * s.inChannels * cols, g = dOut + b * s.outChannels * outPlane
        if let dBias { sumRows(dBias, g, rows: s.outChannels, width: outPlane) }
        for band in bands {
            let n = band.count * s.width, at = band.lowerBound * s.width
            im2col(scratch, g, w, outRows: band)
            // dWeight (C, OC KH KW) += x[:, band] (C, n) * dColumns^T (n, OC KH KW)
            BLAS.gemm(transB: true, m: s.inChannels, n: rows, k: n, a: x + at, lda: cols, b: scratch, ldb: n,
                      beta: 1, c: dWeight, ldc: rows)
            // dInput[:, band] (C, n) += weight (C, OC KH KW) * dColumns (OC KH KW, n)
            if let dInput {
                BLAS.gemm(m: s.inChannels, n: n, k: rows, a: weight, lda: rows, b: scratch, ldb: n,
                          beta: 1, c: dInput + b * s.inChannels * cols + at, ldc: cols)
            }
        }
    }
}

// MARK: - im2col / col2im

/// One convolution window sliding over an image (channels, height, width) to give outH x outW
/// positions. Column matrix: (channels KH KW, outH outW), row (c, kh, kw), column (oh, ow).
struct ConvWindow {
    let channels, height, width, kernelH, kernelW, strideH, strideW, padH, padW, dilationH, dilationW, outH, outW: Int

    var rows: Int { channels * kernelH * kernelW }

    /// Output rows split into bands whose column matrix fits `convColumnBudget`; never empty.
    var bands: [Range<Int>] {
        let step = max(1, min(outH, convColumnBudget / max(1, rows * outW)))
        return stride(from: 0, to: outH, by: step).map { $0..<min($0 + step, outH) }
    }

    /// The output columns `ow` whose input column `ow * strideW + offset` lies inside 0..<width.
    @inline(__always)
    func validColumns(offset: Int) -> Range<Int> {
        let lo = offset >= 0 ? 0 : min(outW, (-offset + strideW - 1) / strideW)
        let hi = offset < width ? min(outW, (width - offset + strideW - 1) / strideW) : 0
        return lo..<max(lo, hi)
    }
}

/// columns (C KH KW, R OW) for the R output rows `outRows`, image (C,H,W). Writes `columns`;
/// padding reads as zero.
func im2col(_ columns: UnsafeMutablePointer<Float>, _ image: UnsafePointer<Float>, _ w: ConvWindow,
            outRows: Range<Int>) {
    let kernel = w.kernelH * w.kernelW, plane = outRows.count * w.outW
    Parallel.forRanges(w.rows, grain: 8) { range in
        for row in range {
            let c = row / kernel, kh = (row / w.kernelW) % w.kernelH, kw = row % w.kernelW
            let src = image + c * w.height * w.width, dst = columns + row * plane
            let offset = kw * w.dilationW - w.padW
            let valid = w.validColumns(offset: offset)
            for oh in outRows {
                let d = dst + (oh - outRows.lowerBound) * w.outW
                let ih = oh * w.strideH - w.padH + kh * w.dilationH
                guard ih >= 0 && ih < w.height else { d.update(repeating: 0, count: w.outW); continue }
                d.update(repeating: 0, count: valid.lowerBound)
                (d + valid.upperBound).update(repeating: 0, count: w.outW - valid.upperBound)
                let s = src + ih * w.width + offset
                if w.strideW == 1 {
                    (d + valid.lowerBound).update(from: s + valid.lowerBound, count: valid.count)
                } else {
                    for ow in valid { d[ow] = s[ow * w.strideW] }
                }
            }
        }
    }
}

/// image (C,H,W) += columns (C KH KW, R OW) of the output rows `outRows` folded back: the adjoint
/// of `im2col`. Split over channels, so no two workers write the same pixel.
func col2im(_ image: UnsafeMutablePointer<Float>, _ columns: UnsafePointer<Float>, _ w: ConvWindow,
            outRows: Range<Int>) {
    let kernel = w.kernelH * w.kernelW, plane = outRows.count * w.outW
    Parallel.forRanges(w.channels) { range in
        for c in range {
            let dst = image + c * w.height * w.width
            for k in 0..<kernel {
                let kh = k / w.kernelW, kw = k % w.kernelW
                let src = columns + (c * kernel + k) * plane
                let offset = kw * w.dilationW - w.padW
                let valid = w.validColumns(offset: offset)
                for oh in outRows {
                    let ih = oh * w.strideH - w.padH + kh * w.dilationH
                    guard ih >= 0 && ih < w.height else { continue }
                    let s = src + (oh - outRows.lowerBound) * w.outW, d = dst + ih * w.width + offset
                    if w.strideW == 1 {
                        for ow in valid { d[ow] += s[ow] }
                    } else {
                        for ow in valid { d[ow * w.strideW] += s[ow] }
                    }
                }
            }
        }
    }
}

// MARK: - Bias helpers

/// y (rows, width): row r set to bias[r], or left alone when there is no bias (the product then
/// overwrites it with beta = 0).
private func fillRows(_ y: UnsafeMutablePointer<Float>, _ bias: UnsafePointer<Float>?, rows: Int, width: Int) {
    guard let bias else { return }
    for r in 0..<rows { (y + r * width).update(repeating: bias[r], count: width) }
}

/// sums (rows) += row sums of x (rows, width).
private func sumRows(_ sums: UnsafeMutablePointer<Float>, _ x: UnsafePointer<Float>, rows: Int, width: Int) {
    for r in 0..<rows {
        let row = x + r * width
        var acc: Float = 0
        for i in 0..<width { acc += row[i] }
        sums[r] += acc
    }
}
