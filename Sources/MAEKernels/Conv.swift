// 2-D convolution and transposed convolution (groups = 1), NCHW, float32, as torch.nn.Conv2d and
// torch.nn.ConvTranspose2d. Both lower to im2col / col2im plus one matrix product per image; the
// product is split over our workers by `BLAS.gemm`, and im2col / col2im over channels, so a batch of
// one uses every core as well as a large batch does.

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
    let scratch: UnsafeMutablePointer<Float>? = s.isPointwise ? nil : .allocate(capacity: rows * cols)
    defer { scratch?.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * inPlane, y = out + b * s.outChannels * cols
        let columns: UnsafePointer<Float>
        if let scratch {
            im2col(scratch, x, w)
            columns = UnsafePointer(scratch)
        } else {
            columns = x
        }
        fillRows(y, bias, rows: s.outChannels, width: cols)
        // y (OC, L) = weight (OC, C KH KW) * columns (C KH KW, L) [+ bias]
        BLAS.gemm(m: s.outChannels, n: cols, k: rows, a: weight, lda: rows, b: columns, ldb: cols,
                  beta: bias == nil ? 0 : 1, c: y, ldc: cols)
    }
}

/// dInput (B,C,H,W) or nil, dWeight (OC,C,KH,KW), dBias (OC) or nil, dOut (B,OC,OH,OW),
/// input (B,C,H,W), weight (OC,C,KH,KW). Accumulates into the gradients.
public func conv2dBackward(dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>,
                           dBias: UnsafeMutablePointer<Float>?, dOut: UnsafePointer<Float>,
                           input: UnsafePointer<Float>, weight: UnsafePointer<Float>, size s: Conv2dSize) {
    let w = s.window
    let rows = w.rows, cols = w.outH * w.outW, inPlane = s.inChannels * s.height * s.width
    let scratch: UnsafeMutablePointer<Float>? = s.isPointwise ? nil : .allocate(capacity: rows * cols)
    defer { scratch?.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * inPlane, g = dOut + b * s.outChannels * cols
        if let dBias { sumRows(dBias, g, rows: s.outChannels, width: cols) }
        let columns: UnsafePointer<Float>
        if let scratch {
            im2col(scratch, x, w)
            columns = UnsafePointer(scratch)
        } else {
            columns = x
        }
        // dWeight (OC, C KH KW) += g (OC, L) * columns^T (L, C KH KW)
        BLAS.gemm(transB: true, m: s.outChannels, n: rows, k: cols, a: g, lda: cols, b: columns, ldb: cols,
                  beta: 1, c: dWeight, ldc: rows)
        guard let dInput else { continue }
        let dx = dInput + b * inPlane
        // dColumns (C KH KW, L) = weight^T (C KH KW, OC) * g (OC, L), then folded back onto the image.
        if let scratch {
            BLAS.gemm(transA: true, m: rows, n: cols, k: s.outChannels, a: weight, lda: rows, b: g, ldb: cols,
                      c: scratch, ldc: cols)
            col2im(dx, scratch, w)
        } else {
            BLAS.gemm(transA: true, m: rows, n: cols, k: s.outChannels, a: weight, lda: rows, b: g, ldb: cols,
                      beta: 1, c: dx, ldc: cols)
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
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rows * cols)
    defer { scratch.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * s.inChannels * cols, y = out + b * s.outChannels * outPlane
        // columns (OC KH KW, H W) = weight^T (OC KH KW, C) * x (C, H W), then folded onto y.
        BLAS.gemm(transA: true, m: rows, n: cols, k: s.inChannels, a: weight, lda: rows, b: x, ldb: cols,
                  c: scratch, ldc: cols)
        if bias == nil { y.update(repeating: 0, count: s.outChannels * outPlane) }
        fillRows(y, bias, rows: s.outChannels, width: outPlane)
        col2im(y, scratch, w)
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
    let scratch = UnsafeMutablePointer<Float>.allocate(capacity: rows * cols)
    defer { scratch.deallocate() }
    for b in 0..<s.batch {
        let x = input + b * s.inChannels * cols, g = dOut + b * s.outChannels * outPlane
        if let dBias { sumRows(dBias, g, rows: s.outChannels, width: outPlane) }
        im2col(scratch, g, w)
        // dWeight (C, OC KH KW) += x (C, H W) * dColumns^T (H W, OC KH KW)
        BLAS.gemm(transB: true, m: s.inChannels, n: rows, k: cols, a: x, lda: cols, b: scratch, ldb: cols,
                  beta: 1, c: dWeight, ldc: rows)
        // dInput (C, H W) += weight (C, OC KH KW) * dColumns (OC KH KW, H W)
        if let dInput {
            BLAS.gemm(m: s.inChannels, n: cols, k: rows, a: weight, lda: rows, b: scratch, ldb: cols,
                      beta: 1, c: dInput + b * s.inChannels * cols, ldc: cols)
        }
    }
}

// MARK: - im2col / col2im

/// One convolution window sliding over an image (channels, height, width) to give outH x outW
/// positions. Column matrix: (channels KH KW, outH outW), row (c, kh, kw), column (oh, ow).
struct ConvWindow {
    let channels, height, width, kernelH, kernelW, strideH, strideW, padH, padW, dilationH, dilationW, outH, outW: Int

    var rows: Int { channels * kernelH * kernelW }

    /// The output columns `ow` whose input column `ow * strideW + offset` lies inside 0..<width.
    @inline(__always)
    func validColumns(offset: Int) -> Range<Int> {
        let lo = offset >= 0 ? 0 : min(outW, (-offset + strideW - 1) / strideW)
        let hi = offset < width ? min(outW, (width - offset + strideW - 1) / strideW) : 0
        return lo..<max(lo, hi)
    }
}

/// columns (C KH KW, OH OW), image (C,H,W). Writes `columns`; padding reads as zero.
func im2col(_ columns: UnsafeMutablePointer<Float>, _ image: UnsafePointer<Float>, _ w: ConvWindow) {
    let kernel = w.kernelH * w.kernelW, plane = w.outH * w.outW
    Parallel.forRanges(w.rows, grain: 8) { range in
        for row in range {
            let c = row / kernel, kh = (row / w.kernelW) % w.kernelH, kw = row % w.kernelW
            let src = image + c * w.height * w.width, dst = columns + row * plane
            let offset = kw * w.dilationW - w.padW
            let valid = w.validColumns(offset: offset)
            for oh in 0..<w.outH {
                let d = dst + oh * w.outW
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

/// image (C,H,W) += columns (C KH KW, OH OW) folded back: the adjoint of `im2col`. Split over
/// channels, so no two workers write the same pixel.
func col2im(_ image: UnsafeMutablePointer<Float>, _ columns: UnsafePointer<Float>, _ w: ConvWindow) {
    let kernel = w.kernelH * w.kernelW, plane = w.outH * w.outW
    Parallel.forRanges(w.channels) { range in
        for c in range {
            let dst = image + c * w.height * w.width
            for k in 0..<kernel {
                let kh = k / w.kernelW, kw = k % w.kernelW
                let src = columns + (c * kernel + k) * plane
                let offset = kw * w.dilationW - w.padW
                let valid = w.validColumns(offset: offset)
                for oh in 0..<w.outH {
                    let ih = oh * w.strideH - w.padH + kh * w.dilationH
                    guard ih >= 0 && ih < w.height else { continue }
                    let s = src + oh * w.outW, d = dst + ih * w.width + offset
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
