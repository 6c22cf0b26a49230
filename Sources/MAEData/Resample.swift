import Foundation

/// Pillow's resampling (src/libImaging/Resample.c) for `Image.BICUBIC` and `Image.BILINEAR`, reproduced exactly: a
/// separable filter whose support widens by the downscale factor (antialiasing), coefficients
/// normalised then rounded to 22-bit fixed point, the horizontal pass first, and uint8 rounding
/// and clipping after each pass. torchvision's Resize on PIL images calls exactly this.
enum PILResample {
    /// Pillow's fixed-point precision for 8-bit images: 32 - 8 - 2 bits.
    static let precisionBits = 22

    /// The separable filters: Pillow's bicubic (support 2) and bilinear (triangle, support 1).
    enum Filter {
        case bilinear, bicubic
        var support: Double { self == .bicubic ? 2 : 1 }
        func weight(_ x: Double) -> Double {
            switch self {
            case .bicubic: return PILResample.bicubic(x)
            case .bilinear:
                let x = abs(x)
                return x < 1 ? 1 - x : 0
            }
        }
    }

    /// Pillow's bicubic kernel, a = -0.5 (not PyTorch's -0.75).
    static func bicubic(_ x: Double) -> Double {
        let a = -0.5
        let x = abs(x)
        if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
        if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
        return 0
    }

    /// Per output pixel: the first input index, and fixed-point weights over `ksize` taps
    /// (zero past the pixel's own count). Mirrors `precompute_coeffs` + `normalize_coeffs_8bpc`.
    struct Coefficients {
        var ksize: Int
        var start: [Int]
        var count: [Int]
        var weights: [Int32]   // (outSize, ksize)
    }

    static func coefficients(inSize: Int, in0: Double, in1: Double, outSize: Int, filter: Filter = .bicubic) -> Coefficients {
        let scale = (in1 - in0) / Double(outSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        let ksize = Int(support.rounded(.up)) * 2 + 1
        var c = Coefficients(ksize: ksize, start: [Int](repeating: 0, count: outSize),
                             count: [Int](repeating: 0, count: outSize),
                             weights: [Int32](repeating: 0, count: outSize * ksize))
        var k = [Double](repeating: 0, count: ksize)
        let ss = 1.0 / filterScale
        for xx in 0..<outSize {
            let center = in0 + (Double(xx) + 0.5) * scale
            // C's (int) cast truncates toward zero, as Int(_:) does.
            let xmin = max(Int(center - support + 0.5), 0)
            let xmax = min(Int(center + support + 0.5), inSize) - xmin
            var ww = 0.0
            for x in 0..<max(xmax, 0) {
                let w = filter.weight((Double(x + xmin) - center + 0.5) * ss)
                k[x] = w
                ww += w
            }
            c.start[xx] = xmin
            c.count[xx] = max(xmax, 0)
            let one = Double(1 << precisionBits)
            for x in 0..<max(xmax, 0) {
                let w = ww != 0 ? k[x] / ww : k[x]
                c.weights[xx * ksize + x] = Int32(w < 0 ? (-0.5 + w * one).rounded(.towardZero)
                                                        : (0.5 + w * one).rounded(.towardZero))
            }
        }
        return c
    }

    @inline(__always)
    static func clip8(_ v: Int32) -> UInt8 {
        let shifted = v >> Int32(precisionBits)
        return shifted < 0 ? 0 : shifted > 255 ? 255 : UInt8(shifted)
    }

    /// Resizes (H, W, C) bytes `src` of size `width` x `height` to `outWidth` x `outHeight`,
    /// reading the box `box` = (x0, y0, x1, y1) of the source (the whole image by default).
    static func resize(_ src: [UInt8], width: Int, height: Int, channels: Int,
                       outWidth: Int, outHeight: Int,
                       box: (Double, Double, Double, Double)? = nil, filter: Filter = .bicubic) -> [UInt8] {
        let (x0, y0, x1, y1) = box ?? (0, 0, Double(width), Double(height))
        let needH = outWidth != width || x0 != 0 || x1 != Double(outWidth)
        let needV = outHeight != height || y0 != 0 || y1 != Double(outHeight)
        let cy = coefficients(inSize: height, in0: y0, in1: y1, outSize: outHeight, filter: filter)
        // Only the source rows the vertical pass reads go through the horizontal pass.
        let rowFirst = needV ? cy.start[0] : Int(y0)
        let rowLast = needV ? cy.start[outHeight - 1] + cy.count[outHeight - 1] : Int(y0) + outHeight
        var current = src, curWidth = width, rowOffset = 0
        if needH {
            let cx = coefficients(inSize: width, in0: x0, in1: x1, outSize: outWidth, filter: filter)
            let rows = rowLast - rowFirst
            var out = [UInt8](repeating: 0, count: rows * outWidth * channels)
            src.withUnsafeBufferPointer { s in
                out.withUnsafeMutableBufferPointer { o in
                    cx.weights.withUnsafeBufferPointer { k in
                        for y in 0..<rows {
                            let srow = (y + rowFirst) * width * channels
                            for xx in 0..<outWidth {
                                let start = cx.start[xx], n = cx.count[xx], kk = xx * cx.ksize
                                for ch in 0..<channels {
                                    var acc = Int32(1 << (precisionBits - 1))
                                    for x in 0..<n {
                                        acc &+= Int32(s[srow + (start + x) * channels + ch]) &* k[kk + x]
                                    }
                                    o[(y * outWidth + xx) * channels + ch] = clip8(acc)
                                }
                            }
                        }
                    }
                }
            }
            current = out; curWidth = outWidth; rowOffset = rowFirst
        }
        guard needV else {
            if needH { return current }
            // Neither pass: the box is the whole image at the same size (Pillow returns a copy).
            return Array(current[(rowFirst * curWidth * channels)..<(rowLast * curWidth * channels)])
        }
        var out = [UInt8](repeating: 0, count: outHeight * curWidth * channels)
        current.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                cy.weights.withUnsafeBufferPointer { k in
                    let stride = curWidth * channels
                    for yy in 0..<outHeight {
                        let start = cy.start[yy] - rowOffset, n = cy.count[yy], kk = yy * cy.ksize
                        for i in 0..<stride {
                            var acc = Int32(1 << (precisionBits - 1))
                            for y in 0..<n {
                                acc &+= Int32(s[(start + y) * stride + i]) &* k[kk + y]
                            }
                            o[yy * stride + i] = clip8(acc)
                        }
                    }
                }
            }
        }
        return out
    }
}
