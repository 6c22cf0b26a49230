// Reading PNG label maps for `seg-eval`, through libpng's simplified API (which reports errors by
// return value, so no setjmp is needed from Swift). Kept in this one file so it can be swapped for
// MAEData's label-map reader.
import CPNG
import Foundation
import MAEJSON
import MAEMetrics

/// png.h's format flags (the composite macros are not imported into Swift).
private enum PNGFormat {
    static let alpha: UInt32 = 0x01, color: UInt32 = 0x02, linear: UInt32 = 0x04, colormap: UInt32 = 0x08
    static let gray: UInt32 = 0
    static let grayAlpha: UInt32 = alpha
    static let linearGray: UInt32 = linear
    static let rgbaColormap: UInt32 = color | alpha | colormap
}

/// Reads a label map: gray PNGs (8 or 16 bit) give their values, palette PNGs (VOC style) give the
/// palette index of each pixel (as `numpy.array(PIL.Image.open(path))`), gray + alpha gives the gray
/// value. RGB PNGs are refused.
func readLabelMapPNG(_ url: URL) throws -> (width: Int, height: Int, labels: [Int32]) {
    func failure(_ problem: String) -> PathError {
        PathError(url.path, problem)
    }
    guard let data = try? Data(contentsOf: url) else { throw failure("cannot be read") }
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    defer { png_image_free(&image) }
    let ok = data.withUnsafeBytes { raw in png_image_begin_read_from_memory(&image, raw.baseAddress, raw.count) }
    guard ok != 0 else { throw failure("is not a readable PNG (\(message(&image)))") }
    let width = Int(image.width), height = Int(image.height), fileFormat = image.format
    let count = width * height

    func finish<T: FixedWidthInteger>(_ format: UInt32, channels: Int, as: T.Type,
                                      colormap: UnsafeMutableRawPointer? = nil) throws -> [T] {
        image.format = format
        var pixels = [T](repeating: 0, count: count * channels)
        let done = pixels.withUnsafeMutableBytes { buffer in
            png_image_finish_read(&image, nil, buffer.baseAddress, 0, colormap)
        }
        guard done != 0 else { throw failure("cannot be decoded (\(message(&image)))") }
        return pixels
    }

    let labels: [Int32]
    if fileFormat & PNGFormat.colormap != 0 {
        // Colour-mapped output keeps the file's palette indices.
        var colormap = [UInt8](repeating: 0, count: 256 * 4)
        image.colormap_entries = 256
        labels = try colormap.withUnsafeMutableBytes { cmap in
            try finish(PNGFormat.rgbaColormap, channels: 1, as: UInt8.self, colormap: cmap.baseAddress)
        }.map { Int32($0) }
    } else if fileFormat & PNGFormat.color != 0 {
        throw failure("is an RGB PNG, but a label map must be a gray or palette PNG")
    } else if fileFormat & PNGFormat.alpha != 0 {
        // Gray + alpha: the gray channel as is, without compositing (16-bit as sRGB keeps 8-bit values).
        let pixels = try finish(PNGFormat.grayAlpha, channels: 2, as: UInt8.self)
        labels = (0..<count).map { Int32(pixels[2 * $0]) }
    } else if fileFormat & PNGFormat.linear != 0 {
        labels = try finish(PNGFormat.linearGray, channels: 1, as: UInt16.self).map { Int32($0) }
    } else {
        labels = try finish(PNGFormat.gray, channels: 1, as: UInt8.self).map { Int32($0) }
    }
    return (width, height, labels)
}

private func message(_ image: inout png_image) -> String {
    withUnsafeBytes(of: &image.message) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
    }
}
