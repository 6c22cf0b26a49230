import Foundation
import MAEData

/// One line of a plot: (x, y) points joined in order; non-finite points are skipped.
public struct PlotSeries: Sendable {
    public var name: String
    public var points: [(x: Double, y: Double)]
    /// nil picks the next colour of the palette.
    public var color: (UInt8, UInt8, UInt8)?

    public init(name: String, points: [(x: Double, y: Double)], color: (UInt8, UInt8, UInt8)? = nil) {
        self.name = name; self.points = points; self.color = color
    }
}

/// A small line-plot renderer to PNG (training curves, report figures): axes with "nice" ticks,
/// several series, a legend, a title; text in a built-in 5x7 bitmap font, so no font files are needed.
public struct LinePlot: Sendable {
    public var title: String
    public var xLabel: String
    public var yLabel: String
    public var series: [PlotSeries]
    public var width = 640
    public var height = 400

    public init(title: String, xLabel: String, yLabel: String, series: [PlotSeries], width: Int = 640, height: Int = 400) {
        self.title = title; self.xLabel = xLabel; self.yLabel = yLabel; self.series = series
        self.width = width; self.height = height
    }

    /// Matplotlib's default cycle, so figures look familiar.
    static let palette: [(UInt8, UInt8, UInt8)] = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40),
                                                   (148, 103, 189), (140, 86, 75), (227, 119, 194), (127, 127, 127)]

    public func write(to url: URL) throws { try ImageCodec.writePNG(render(), to: url) }

    public func render() -> RGBImage {
        var canvas = Canvas(width: width, height: height)
        let left = 64, right = width - 16, top = 28, bottom = height - 40
        let finite = series.flatMap(\.points).filter { $0.x.isFinite && $0.y.isFinite }
        let xs = niceRange(finite.map(\.x)), ys = niceRange(finite.map(\.y))
        func px(_ x: Double) -> Int { left + Int(((x - xs.lo) / (xs.hi - xs.lo) * Double(right - left)).rounded()) }
        func py(_ y: Double) -> Int { bottom - Int(((y - ys.lo) / (ys.hi - ys.lo) * Double(bottom - top)).rounded()) }

        canvas.text(title, x: (width - Canvas.textWidth(title)) / 2, y: 8, color: (0, 0, 0))
        for t in ticks(xs) {
            let x = px(t)
            canvas.line(x, top, x, bottom, color: (232, 232, 232))
            canvas.line(x, bottom, x, bottom + 4, color: (0, 0, 0))
            let s = tickLabel(t, step: xs.step)
            canvas.text(s, x: x - Canvas.textWidth(s) / 2, y: bottom + 8, color: (0, 0, 0))
        }
        for t in ticks(ys) {
            let y = py(t)
            canvas.line(left, y, right, y, color: (232, 232, 232))
            canvas.line(left - 4, y, left, y, color: (0, 0, 0))
            let s = tickLabel(t, step: ys.step)
            canvas.text(s, x: left - 8 - Canvas.textWidth(s), y: y - 3, color: (0, 0, 0))
        }
        canvas.line(left, top, left, bottom, color: (0, 0, 0))
        canvas.line(left, bottom, right, bottom, color: (0, 0, 0))
        canvas.text(xLabel, x: (left + right - Canvas.textWidth(xLabel)) / 2, y: bottom + 22, color: (0, 0, 0))
        canvas.text(yLabel, x: 4, y: 8, color: (0, 0, 0))

        for (i, s) in series.enumerated() {
            let color = s.color ?? LinePlot.palette[i % LinePlot.palette.count]
            let pts = s.points.filter { $0.x.isFinite && $0.y.isFinite }.map { (px($0.x), py($0.y)) }
            for (a, b) in zip(pts, pts.dropFirst()) { canvas.line(a.0, a.1, b.0, b.1, color: color, thick: true) }
            if pts.count == 1 { canvas.fill(pts[0].0 - 2, pts[0].1 - 2, 5, 5, color: color) }
            // Legend, top right, one row per series.
            let ly = top + 6 + i * 12, lx = right - 20 - Canvas.textWidth(s.name)
            canvas.fill(lx - 18, ly + 2, 14, 3, color: color)
            canvas.text(s.name, x: lx, y: ly, color: (0, 0, 0))
        }
        return canvas.image
    }

    /// The data range widened to multiples of a 1-2-5 step giving about five intervals.
    func niceRange(_ values: [Double]) -> (lo: Double, hi: Double, step: Double) {
        var lo = values.min() ?? 0, hi = values.max() ?? 1
        if hi - lo < 1e-12 * max(1, abs(hi)) { lo -= 0.5 * max(abs(lo), 1e-3); hi += 0.5 * max(abs(hi), 1e-3) }
        let raw = (hi - lo) / 5, magnitude = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * magnitude }.first { $0 >= raw } ?? 10 * magnitude
        return (floor(lo / step) * step, ceil(hi / step) * step, step)
    }

    func ticks(_ r: (lo: Double, hi: Double, step: Double)) -> [Double] {
        let n = Int(((r.hi - r.lo) / r.step).rounded())
        return (0...n).map { r.lo + Double($0) * r.step }
    }

    func tickLabel(_ v: Double, step: Double) -> String {
        let decimals = max(0, -Int(floor(log10(step) + 1e-9)))
        if abs(v) >= 1e5 || (abs(v) < 1e-3 && v != 0) { return String(format: "%.1e", v) }
        return String(format: "%.\(decimals)f", abs(v) < step / 2 ? 0 : v)
    }
}

/// An RGB raster with the few drawing operations the plots need.
struct Canvas {
    var image: RGBImage

    init(width: Int, height: Int) {
        image = RGBImage(width: width, height: height, pixels: [UInt8](repeating: 255, count: width * height * 3))
    }

    mutating func set(_ x: Int, _ y: Int, _ c: (UInt8, UInt8, UInt8)) {
        guard x >= 0, y >= 0, x < image.width, y < image.height else { return }
        let i = (y * image.width + x) * 3
        image.pixels[i] = c.0; image.pixels[i + 1] = c.1; image.pixels[i + 2] = c.2
    }

    mutating func fill(_ x: Int, _ y: Int, _ w: Int, _ h: Int, color: (UInt8, UInt8, UInt8)) {
        for yy in y..<(y + h) { for xx in x..<(x + w) { set(xx, yy, color) } }
    }

    /// Bresenham; `thick` draws a 2x2 pen so curves stay visible.
    mutating func line(_ x0: Int, _ y0: Int, _ x1: Int, _ y1: Int, color: (UInt8, UInt8, UInt8), thick: Bool = false) {
        var x = x0, y = y0
        let dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1
        var err = dx + dy
        while true {
            set(x, y, color)
            if thick { set(x + 1, y, color); set(x, y + 1, color); set(x + 1, y + 1, color) }
            if x == x1 && y == y1 { break }
            let e2 = 2 * err
            if e2 >= dy { err += dy; x += sx }
            if e2 <= dx { err += dx; y += sy }
        }
    }

    static func textWidth(_ s: String) -> Int { s.count * 6 }

    /// Draws `s` with its top-left at (x, y); lower case is drawn as upper case.
    mutating func text(_ s: String, x: Int, y: Int, color: (UInt8, UInt8, UInt8)) {
        for (i, ch) in s.uppercased().enumerated() {
            guard let columns = Canvas.font[ch] else { continue }
            for (cx, bits) in columns.enumerated() {
                for row in 0..<7 where bits & (1 << row) != 0 { set(x + i * 6 + cx, y + row, color) }
            }
        }
    }

    /// A 5x7 font: five column bytes per glyph, bit 0 the top row.
    static let font: [Character: [UInt8]] = [
        "0": [0x3E, 0x51, 0x49, 0x45, 0x3E], "1": [0x00, 0x42, 0x7F, 0x40, 0x00], "2": [0x42, 0x61, 0x51, 0x49, 0x46],
        "3": [0x21, 0x41, 0x45, 0x4B, 0x31], "4": [0x18, 0x14, 0x12, 0x7F, 0x10], "5": [0x27, 0x45, 0x45, 0x45, 0x39],
        "6": [0x3C, 0x4A, 0x49, 0x49, 0x30], "7": [0x01, 0x71, 0x09, 0x05, 0x03], "8": [0x36, 0x49, 0x49, 0x49, 0x36],
        "9": [0x06, 0x49, 0x49, 0x29, 0x1E],
        "A": [0x7E, 0x11, 0x11, 0x11, 0x7E], "B": [0x7F, 0x49, 0x49, 0x49, 0x36], "C": [0x3E, 0x41, 0x41, 0x41, 0x22],
        "D": [0x7F, 0x41, 0x41, 0x22, 0x1C], "E": [0x7F, 0x49, 0x49, 0x49, 0x41], "F": [0x7F, 0x09, 0x09, 0x09, 0x01],
        "G": [0x3E, 0x41, 0x49, 0x49, 0x7A], "H": [0x7F, 0x08, 0x08, 0x08, 0x7F], "I": [0x00, 0x41, 0x7F, 0x41, 0x00],
        "J": [0x20, 0x40, 0x41, 0x3F, 0x01], "K": [0x7F, 0x08, 0x14, 0x22, 0x41], "L": [0x7F, 0x40, 0x40, 0x40, 0x40],
        "M": [0x7F, 0x02, 0x0C, 0x02, 0x7F], "N": [0x7F, 0x04, 0x08, 0x10, 0x7F], "O": [0x3E, 0x41, 0x41, 0x41, 0x3E],
        "P": [0x7F, 0x09, 0x09, 0x09, 0x06], "Q": [0x3E, 0x41, 0x51, 0x21, 0x5E], "R": [0x7F, 0x09, 0x19, 0x29, 0x46],
        "S": [0x46, 0x49, 0x49, 0x49, 0x31], "T": [0x01, 0x01, 0x7F, 0x01, 0x01], "U": [0x3F, 0x40, 0x40, 0x40, 0x3F],
        "V": [0x1F, 0x20, 0x40, 0x20, 0x1F], "W": [0x3F, 0x40, 0x38, 0x40, 0x3F], "X": [0x63, 0x14, 0x08, 0x14, 0x63],
        "Y": [0x07, 0x08, 0x70, 0x08, 0x07], "Z": [0x61, 0x51, 0x49, 0x45, 0x43],
        ".": [0x00, 0x60, 0x60, 0x00, 0x00], ",": [0x00, 0x50, 0x30, 0x00, 0x00], "-": [0x08, 0x08, 0x08, 0x08, 0x08],
        "+": [0x08, 0x08, 0x3E, 0x08, 0x08], ":": [0x00, 0x36, 0x36, 0x00, 0x00], "/": [0x20, 0x10, 0x08, 0x04, 0x02],
        "(": [0x00, 0x1C, 0x22, 0x41, 0x00], ")": [0x00, 0x41, 0x22, 0x1C, 0x00], "%": [0x23, 0x13, 0x08, 0x64, 0x62],
        "_": [0x40, 0x40, 0x40, 0x40, 0x40], "=": [0x14, 0x14, 0x14, 0x14, 0x14], "'": [0x00, 0x05, 0x03, 0x00, 0x00],
    ]
}
