import Foundation

// The Pillow image operations timm's RandAugment calls (ImageOps, ImageEnhance, Image.transform /
// rotate), reproduced from Pillow's C code (libImaging: Geometry.c, Blend.c, Filter.c, Convert.c)
// so that the same inputs give the same bytes. Arithmetic follows the C types: blends in float32,
// the 3x3 filter in float32, the affine filters in double.

/// Pillow's resampling filters for geometric transforms.
public enum PILInterpolation: String, Sendable, Codable {
    case nearest, bilinear, bicubic
}

/// An RGB fill colour.
public struct RGBColor: Sendable, Equatable {
    public var r: UInt8, g: UInt8, b: UInt8
    public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }
    /// timm's `img_mean` hparam for ImageNet: round(255 * mean) = (124, 116, 104).
    public static let imageNetMean = RGBColor(124, 116, 104)
}

extension RGBImage {
    // MARK: - Point operations (ImageOps)

    /// Applies one 256-entry table per channel (`Image.point`, values clipped to 0...255).
    func mapped(_ luts: [[Int]]) -> RGBImage {
        let tables = luts.map { $0.map { UInt8(clamping: $0) } }
        var out = self
        for i in 0..<(width * height) {
            for c in 0..<3 { out.pixels[3 * i + c] = tables[c][Int(pixels[3 * i + c])] }
        }
        return out
    }

    /// Per-channel histograms, 256 bins each (`Image.histogram`).
    func histograms() -> [[Int]] {
        var h = [[Int]](repeating: [Int](repeating: 0, count: 256), count: 3)
        for i in 0..<(width * height) {
            for c in 0..<3 { h[c][Int(pixels[3 * i + c])] += 1 }
        }
        return h
    }

    /// `ImageOps.autocontrast(img)`: each channel's [lo, hi] stretched to [0, 255].
    public func autocontrasted() -> RGBImage {
        mapped(histograms().map { h in
            guard let lo = h.firstIndex(where: { $0 != 0 }), let hi = h.lastIndex(where: { $0 != 0 }), hi > lo else {
                return Array(0..<256)
            }
            let scale = 255.0 / Double(hi - lo), offset = -Double(lo) * scale
            return (0..<256).map { min(255, max(0, Int(Double($0) * scale + offset))) }
        })
    }

    /// `ImageOps.equalize(img)`: per-channel histogram equalisation.
    public func equalized() -> RGBImage {
        mapped(histograms().map { h in
            let used = h.filter { $0 != 0 }
            guard used.count > 1 else { return Array(0..<256) }
            let step = (used.reduce(0, +) - used.last!) / 255
            guard step > 0 else { return Array(0..<256) }
            var n = step / 2
            return (0..<256).map { i in
                defer { n += h[i] }
                return n / step
            }
        })
    }

    /// `ImageOps.invert(img)`.
    public func inverted() -> RGBImage {
        let lut = (0..<256).map { 255 - $0 }
        return mapped([lut, lut, lut])
    }

    /// `ImageOps.posterize(img, bits)`: keeps the top `bits` bits. Pillow 13 rejects 0 bits; timm's
    /// PosterizeIncreasing asks for 0 at magnitude 10, which older Pillow turned black, as here.
    public func posterized(bits: Int) -> RGBImage {
        if bits >= 8 { return self }
        let mask = ~((1 << (8 - max(0, bits))) - 1)
        let lut = (0..<256).map { $0 & mask }
        return mapped([lut, lut, lut])
    }

    /// `ImageOps.solarize(img, threshold)`: values at or above the threshold are inverted.
    public func solarized(threshold: Int) -> RGBImage {
        let lut = (0..<256).map { $0 < threshold ? $0 : 255 - $0 }
        return mapped([lut, lut, lut])
    }

    /// timm's `solarize_add`: values below the threshold get `add` (clipped at 255).
    public func solarizeAdded(_ add: Int, threshold: Int = 128) -> RGBImage {
        let lut = (0..<256).map { $0 < threshold ? min(255, $0 + add) : $0 }
        return mapped([lut, lut, lut])
    }

    // MARK: - Enhancements (ImageEnhance)

    /// Pillow's RGB -> L: (R * 19595 + G * 38470 + B * 7471 + 0x8000) >> 16 (ITU-R 601-2).
    func luma() -> [UInt8] {
        (0..<(width * height)).map { i in
            let r = Int(pixels[3 * i]), g = Int(pixels[3 * i + 1]), b = Int(pixels[3 * i + 2])
            return UInt8((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16)
        }
    }

    /// `Image.blend(degenerate, self, factor)` (Blend.c): in1 + alpha * (in2 - in1) in float32,
    /// truncated; clipped when extrapolating.
    func blended(from degenerate: RGBImage, factor: Double) -> RGBImage {
        let alpha = Float(factor)
        if alpha == 0 { return degenerate }
        if alpha == 1 { return self }
        var out = self
        let interpolate = alpha >= 0 && alpha <= 1
        for i in 0..<pixels.count {
            let a = Int(degenerate.pixels[i]), b = Int(pixels[i])
            let v = Float(a) + alpha * Float(b - a)
            out.pixels[i] = interpolate ? UInt8(v) : v <= 0 ? 0 : v >= 255 ? 255 : UInt8(v)
        }
        return out
    }

    /// `ImageEnhance.Color(img).enhance(factor)`: blend with the gray image.
    public func colorEnhanced(_ factor: Double) -> RGBImage {
        let l = luma()
        let gray = RGBImage(width: width, height: height, pixels: l.flatMap { [$0, $0, $0] })
        return blended(from: gray, factor: factor)
    }

    /// `ImageEnhance.Contrast(img).enhance(factor)`: blend with the flat image at the mean luma.
    public func contrastEnhanced(_ factor: Double) -> RGBImage {
        let l = luma()
        let mean = Int(Double(l.reduce(0) { $0 + Int($1) }) / Double(max(1, l.count)) + 0.5)
        let flat = RGBImage(width: width, height: height,
                            pixels: [UInt8](repeating: UInt8(clamping: mean), count: pixels.count))
        return blended(from: flat, factor: factor)
    }

    /// `ImageEnhance.Brightness(img).enhance(factor)`: blend with black.
    public func brightnessEnhanced(_ factor: Double) -> RGBImage {
        blended(from: RGBImage(width: width, height: height), factor: factor)
    }

    /// `ImageEnhance.Sharpness(img).enhance(factor)`: blend with `ImageFilter.SMOOTH`.
    public func sharpnessEnhanced(_ factor: Double) -> RGBImage {
        blended(from: smoothed(), factor: factor)
    }

    /// `img.filter(ImageFilter.SMOOTH)` (Filter.c's 3x3 path): kernel (1 1 1 / 1 5 1 / 1 1 1) / 13 in
    /// float32 plus 0.5, truncated; the one-pixel border is copied unchanged.
    func smoothed() -> RGBImage {
        guard width >= 3, height >= 3 else { return self }
        let k1 = Float(1) / Float(13), k5 = Float(5) / Float(13)
        var out = self
        for y in 1..<(height - 1) {
            for x in 1..<(width - 1) {
                for c in 0..<3 {
                    func p(_ yy: Int, _ xx: Int) -> Float { Float(pixels[(yy * width + xx) * 3 + c]) }
                    var s: Float = 0.5
                    s += p(y + 1, x - 1) * k1 + p(y + 1, x) * k1 + p(y + 1, x + 1) * k1
                    s += p(y, x - 1) * k1 + p(y, x) * k5 + p(y, x + 1) * k1
                    s += p(y - 1, x - 1) * k1 + p(y - 1, x) * k1 + p(y - 1, x + 1) * k1
                    out.pixels[(y * width + x) * 3 + c] = s <= 0 ? 0 : s >= 255 ? 255 : UInt8(s)
                }
            }
        }
        return out
    }

    // MARK: - Geometry (Image.transform AFFINE, Image.rotate)

    /// `img.transform(img.size, Image.AFFINE, m, resample, fillcolor=fill)`: output pixel (x, y)
    /// samples the input at (m0 x' + m1 y' + m2, m3 x' + m4 y' + m5) with x' = x + 0.5; pixels whose
    /// sample point falls outside the input keep `fill`.
    public func affineTransformed(_ m: [Double], interpolation: PILInterpolation, fill: RGBColor) -> RGBImage {
        precondition(m.count == 6, "an affine transform has 6 coefficients")
        var out = RGBImage(width: width, height: height,
                           pixels: [UInt8]((0..<(width * height)).flatMap { _ in [fill.r, fill.g, fill.b] }))
        if interpolation == .nearest {
            nearestAffine(m, into: &out)
            return out
        }
        for y in 0..<height {
            for x in 0..<width {
                let xin = Double(x) + 0.5, yin = Double(y) + 0.5
                let sx = m[0] * xin + m[1] * yin + m[2]
                let sy = m[3] * xin + m[4] * yin + m[5]
                let o = (y * width + x) * 3
                switch interpolation {
                case .nearest:
                    break
                case .bilinear:
                    guard sx >= 0, sx < Double(width), sy >= 0, sy < Double(height) else { continue }
                    for c in 0..<3 { out.pixels[o + c] = bilinearSample(sx, sy, c) }
                case .bicubic:
                    guard sx >= 0, sx < Double(width), sy >= 0, sy < Double(height) else { continue }
                    for c in 0..<3 { out.pixels[o + c] = bicubicSample(sx, sy, c) }
                }
            }
        }
        return out
    }

    /// Pillow's NEAREST affine paths: ImagingScaleAffine when there is no rotation or shear (positions
    /// accumulated in double), affine_fixed otherwise (16.16 fixed point).
    private func nearestAffine(_ m: [Double], into out: inout RGBImage) {
        func copy(_ x: Int, _ y: Int, from ix: Int, _ iy: Int) {
            guard ix >= 0, ix < width, iy >= 0, iy < height else { return }
            for c in 0..<3 { out.pixels[(y * width + x) * 3 + c] = pixels[(iy * width + ix) * 3 + c] }
        }
        func coord(_ v: Double) -> Int { v < 0 ? -1 : Int(v) }
        if m[1] == 0 && m[3] == 0 {
            var xs: [Int] = [], xo = m[2] + m[0] * 0.5
            for _ in 0..<width { xs.append(coord(xo)); xo += m[0] }
            var yo = m[5] + m[4] * 0.5
            for y in 0..<height {
                let iy = coord(yo)
                for x in 0..<width { copy(x, y, from: xs[x], iy) }
                yo += m[4]
            }
            return
        }
        func fix(_ v: Double) -> Int { floorInt(v * 65536 + 0.5) }
        let a0 = fix(m[0]), a1 = fix(m[1]), a3 = fix(m[3]), a4 = fix(m[4])
        var a2 = fix(m[2] + m[0] * 0.5 + m[1] * 0.5), a5 = fix(m[5] + m[3] * 0.5 + m[4] * 0.5)
        for y in 0..<height {
            var xx = Int32(truncatingIfNeeded: a2), yy = Int32(truncatingIfNeeded: a5)
            for x in 0..<width {
                copy(x, y, from: Int(xx >> 16), Int(yy >> 16))
                xx &+= Int32(truncatingIfNeeded: a0); yy &+= Int32(truncatingIfNeeded: a3)
            }
            a2 += a1; a5 += a4
        }
    }

    @inline(__always) private func floorInt(_ v: Double) -> Int { v < 0 ? Int(v.rounded(.down)) : Int(v) }
    @inline(__always) private func clipX(_ x: Int) -> Int { x < 0 ? 0 : x < width ? x : width - 1 }
    @inline(__always) private func clipY(_ y: Int) -> Int { y < 0 ? 0 : y < height ? y : height - 1 }
    @inline(__always) private func at(_ y: Int, _ x: Int, _ c: Int) -> Double { Double(pixels[(y * width + x) * 3 + c]) }

    /// Geometry.c's bilinear_filter32RGB.
    private func bilinearSample(_ xin0: Double, _ yin0: Double, _ c: Int) -> UInt8 {
        let xin = xin0 - 0.5, yin = yin0 - 0.5
        let x = floorInt(xin), y = floorInt(yin)
        let dx = xin - Double(x), dy = yin - Double(y)
        let x0 = clipX(x), x1 = clipX(x + 1)
        let r0 = clipY(y)
        var v1 = at(r0, x0, c) + (at(r0, x1, c) - at(r0, x0, c)) * dx
        var v2 = v1
        if y + 1 >= 0 && y + 1 < height { v2 = at(y + 1, x0, c) + (at(y + 1, x1, c) - at(y + 1, x0, c)) * dx }
        v1 = v1 + (v2 - v1) * dy
        return UInt8(v1)
    }

    /// Geometry.c's BICUBIC macro (the a = -1 cubic).
    @inline(__always) private func cubic(_ v1: Double, _ v2: Double, _ v3: Double, _ v4: Double, _ d: Double) -> Double {
        let p1 = v2
        let p2 = -v1 + v3
        let p3 = 2 * (v1 - v2) + v3 - v4
        let p4 = -v1 + v2 - v3 + v4
        return p1 + d * (p2 + d * (p3 + d * p4))
    }

    /// Geometry.c's bicubic_filter32RGB: rows past the bottom repeat the previous row's value.
    private func bicubicSample(_ xin0: Double, _ yin0: Double, _ c: Int) -> UInt8 {
        let xin = xin0 - 0.5, yin = yin0 - 0.5
        var x = floorInt(xin), y = floorInt(yin)
        let dx = xin - Double(x), dy = yin - Double(y)
        x -= 1; y -= 1
        let xs = (0..<4).map { clipX(x + $0) }
        func row(_ r: Int) -> Double { cubic(at(r, xs[0], c), at(r, xs[1], c), at(r, xs[2], c), at(r, xs[3], c), dx) }
        let v1 = row(clipY(y))
        let v2 = y + 1 >= 0 && y + 1 < height ? row(y + 1) : v1
        let v3 = y + 2 >= 0 && y + 2 < height ? row(y + 2) : v2
        let v4 = y + 3 >= 0 && y + 3 < height ? row(y + 3) : v3
        let v = cubic(v1, v2, v3, v4, dy)
        return v <= 0 ? 0 : v >= 255 ? 255 : UInt8(v)
    }

    /// `img.rotate(degrees, resample, fillcolor=fill)`: counter-clockwise about the centre, same size.
    public func rotated(degrees: Double, interpolation: PILInterpolation, fill: RGBColor) -> RGBImage {
        let angle = degrees.truncatingRemainder(dividingBy: 360) + (degrees < 0 ? 360 : 0)
        if angle == 0 || angle == 360 { return self }
        if angle == 180 {
            // Pillow's transpose fast path: the pixel order reversed.
            var out = self
            let n = width * height
            for i in 0..<n { for c in 0..<3 { out.pixels[3 * (n - 1 - i) + c] = pixels[3 * i + c] } }
            return out
        }
        // Python's round(v, 15) is correctly rounded through decimal, as printf's %.15f is.
        func round15(_ v: Double) -> Double { Double(String(format: "%.15f", v))! }
        let a = -(angle * (Double.pi / 180))
        var m = [round15(cos(a)), round15(sin(a)), 0.0, round15(-sin(a)), round15(cos(a)), 0.0]
        let cx = Double(width) / 2, cy = Double(height) / 2
        m[2] = m[0] * -cx + m[1] * -cy + 0.0 + cx
        m[5] = m[3] * -cx + m[4] * -cy + 0.0 + cy
        return affineTransformed(m, interpolation: interpolation, fill: fill)
    }
}
