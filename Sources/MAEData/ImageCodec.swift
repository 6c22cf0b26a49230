import CPNG
import CTurboJPEG
import Foundation
import MAEFormats
import MAEJSON

/// An 8-bit RGB image, rows top to bottom, pixels interleaved: `pixels` is (H, W, 3).
public struct RGBImage: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// (H, W, 3) bytes, row-major.
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3, "RGBImage: pixel count does not match size")
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    /// A black image of the given size.
    public init(width: Int, height: Int) {
        self.init(width: width, height: height, pixels: [UInt8](repeating: 0, count: width * height * 3))
    }
}

/// A per-pixel integer label image (semantic-segmentation targets): `labels` is (H, W).
public struct LabelMap: Sendable, Equatable {
    public var width: Int
    public var height: Int
    /// (H, W) labels, row-major.
    public var labels: [Int32]

    public init(width: Int, height: Int, labels: [Int32]) {
        precondition(labels.count == width * height, "LabelMap: label count does not match size")
        self.width = width
        self.height = height
        self.labels = labels
    }
}

/// Largest image we agree to decode (pixels); a corrupt header must not make us allocate gigabytes.
let maxDecodedPixels = 1 << 26

/// PNG and JPEG reading into `RGBImage`, and PNG writing.
///
/// Decoding follows what `PIL.Image.open(path).convert('RGB')` gives (torchvision's ImageFolder
/// loader): gray is replicated, alpha is dropped without compositing, palette images give their
/// palette colours, 16-bit RGB keeps the high byte and 16-bit gray is clipped to 255 (Pillow's
/// I;16 -> RGB conversion). JPEGs decode with libjpeg-turbo's accurate integer IDCT and fancy
/// upsampling, PIL's defaults.
public enum ImageCodec {
    /// Reads a PNG or JPEG file (recognised by its first bytes, not its extension) as 8-bit RGB.
    public static func decode(contentsOf url: URL) throws -> RGBImage {
        try decode(readFile(url), name: url)
    }

    /// Decodes PNG or JPEG bytes; `name` is the file the bytes came from, for error messages.
    public static func decode(_ data: Data, name: URL) throws -> RGBImage {
        if data.starts(with: pngSignature) { return try decodePNG(data, name: name) }
        if data.starts(with: [0xFF, 0xD8, 0xFF]) { return try decodeJPEG(data, name: name) }
        throw PathError(name, "is neither a PNG nor a JPEG file (unrecognised first bytes)", period: false)
    }

    /// Writes `image` as an 8-bit RGB PNG, atomically (a temporary file renamed into place);
    /// `durable` as `writeAtomically`'s.
    public static func writePNG(_ image: RGBImage, to url: URL, durable: Bool = true) throws {
        let data = try pngEncode(bytes: image.pixels, width: image.width, height: image.height,
                                 format: PNGFormat.rgb, name: url)
        try writeAtomically(data, to: url, durable: durable)
    }

    /// PNG bytes of `image` (8-bit RGB).
    public static func encodePNG(_ image: RGBImage) throws -> Data {
        try pngEncode(bytes: image.pixels, width: image.width, height: image.height,
                      format: PNGFormat.rgb, name: URL(fileURLWithPath: "<memory>"))
    }
}

/// Reading and writing per-pixel label maps (ADE20K / VOC style PNGs).
public enum LabelMapCodec {
    /// Reads a single-channel PNG label map. Gray PNGs (8 or 16 bit) give their values; palette
    /// PNGs (VOC) give palette *indices*, as `numpy.array(PIL.Image.open(path))` does.
    public static func read(contentsOf url: URL) throws -> LabelMap {
        let data = try readFile(url)
        guard data.starts(with: pngSignature) else {
            throw PathError(url, "is not a PNG file, and label maps must be PNGs", period: false)
        }
        return try decodeLabelPNG(data, name: url)
    }

    /// Writes `map` as a gray PNG, 8-bit when every label fits in 0...255 and 16-bit otherwise,
    /// atomically; `durable` as `writeAtomically`'s.
    public static func writePNG(_ map: LabelMap, to url: URL, durable: Bool = true) throws {
        try writeAtomically(try encodePNG(map, name: url), to: url, durable: durable)
    }

    /// PNG bytes of `map` (see `writePNG`).
    public static func encodePNG(_ map: LabelMap, name: URL = URL(fileURLWithPath: "<memory>")) throws -> Data {
        guard let lo = map.labels.min(), let hi = map.labels.max() else {
            throw PathError(name, "is an empty label map and cannot be written", period: false)
        }
        guard lo >= 0, hi <= 65535 else {
            throw PathError(name, "has labels outside 0...65535 (\(lo)...\(hi)), which a PNG cannot hold", period: false)
        }
        if hi <= 255 {
            return try pngEncode(bytes: map.labels.map { UInt8($0) }, width: map.width, height: map.height,
                                 format: PNGFormat.gray, name: name)
        }
        return try pngEncode(bytes: map.labels.map { UInt16($0) }, width: map.width, height: map.height,
                             format: PNGFormat.linearGray, name: name)
    }
}

// MARK: - Files

let pngSignature: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]

func readFile(_ url: URL) throws -> Data {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
        throw PathError(url, "does not exist", period: false)
    }
    guard !isDirectory.boolValue else { throw PathError(url, "is a folder, not a file", period: false) }
    do {
        return try Data(contentsOf: url)
    } catch {
        throw PathError(url, "cannot be read (\(describeCause(error)))", period: false)
    }
}

// MARK: - PNG (libpng's simplified API: errors come back in png_image, no longjmp through Swift)

/// png_image format codes (png.h's PNG_FORMAT_* macros, spelled out because they do not import).
enum PNGFormat {
    static let alpha: UInt32 = 0x01, color: UInt32 = 0x02, linear: UInt32 = 0x04, colormap: UInt32 = 0x08
    static let gray: UInt32 = 0
    static let grayAlpha: UInt32 = alpha
    static let rgb: UInt32 = color
    static let rgba: UInt32 = color | alpha
    static let linearGray: UInt32 = linear
    static let linearRGB: UInt32 = linear | color
    static let rgbaColormap: UInt32 = color | alpha | colormap
    /// PNG_IMAGE_FLAG_16BIT_sRGB: 16-bit samples are sRGB-encoded, so no gamma change on 16 -> 8.
    static let flag16BitSRGB: UInt32 = 0x04
}

func pngMessage(_ image: inout png_image) -> String {
    withUnsafeBytes(of: &image.message) { raw in
        String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

/// An open PNG read. libpng remembers the address of the `png_image` (its error handler finds
/// the jump buffer through it) and a pointer into the file's bytes, so the struct lives on the
/// heap at one address, and callers do the whole read inside one `withUnsafeBytes`.
final class PNGRead {
    let image = UnsafeMutablePointer<png_image>.allocate(capacity: 1)
    let name: URL

    init(_ raw: UnsafeRawBufferPointer, name: URL) throws {
        self.name = name
        image.initialize(to: png_image())
        image.pointee.version = UInt32(PNG_IMAGE_VERSION)
        guard let base = raw.baseAddress, raw.count > 0 else { throw PathError(name, "is an empty file", period: false) }
        guard png_image_begin_read_from_memory(image, base, raw.count) != 0, !failed else {
            throw PathError(name, "is not a readable PNG (\(message))", period: false)
        }
        guard Int(width) * Int(height) <= maxDecodedPixels else {
            throw PathError(name, "is a PNG of \(width)x\(height) pixels, larger than this reader accepts", period: false)
        }
    }

    deinit {
        png_image_free(image)   // a no-op after a completed finish_read
        image.deallocate()
    }

    var width: Int { Int(image.pointee.width) }
    var height: Int { Int(image.pointee.height) }
    /// The file's own format (PNG_FORMAT_* bits), as read from its header.
    var fileFormat: UInt32 { image.pointee.format }
    var failed: Bool { image.pointee.warning_or_error & 0x03 > 1 }
    var message: String { pngMessage(&image.pointee) }

    /// Decodes the pixels as `format` into `T` samples (UInt8, or UInt16 for linear formats).
    func finish<T: FixedWidthInteger>(format: UInt32, flags: UInt32 = 0, channels: Int, as: T.Type,
                                      colormap: UnsafeMutableRawPointer? = nil) throws -> [T] {
        image.pointee.format = format
        image.pointee.flags |= flags
        var out = [T](repeating: 0, count: width * height * channels)
        let ok = out.withUnsafeMutableBytes { buffer in
            png_image_finish_read(image, nil, buffer.baseAddress, 0, colormap)
        }
        guard ok != 0, !failed else { throw PathError(name, "is a truncated or corrupt PNG (\(message))", period: false) }
        return out
    }
}

func decodePNG(_ data: Data, name: URL) throws -> RGBImage {
    try data.withUnsafeBytes { try decodePNG($0, name: name) }
}

func decodePNG(_ raw: UnsafeRawBufferPointer, name: URL) throws -> RGBImage {
    let png = try PNGRead(raw, name: name)
    let w = png.width, h = png.height, fileFormat = png.fileFormat
    let hasAlpha = fileFormat & PNGFormat.alpha != 0
    let isColor = fileFormat & PNGFormat.color != 0
    var rgb = [UInt8](repeating: 0, count: w * h * 3)
    if fileFormat & PNGFormat.linear != 0 && !hasAlpha {
        // 16-bit without alpha: read the raw samples (a 16-bit file is taken as linear, and linear
        // output is then the identity) and reduce them as Pillow does.
        if isColor {
            let s = try png.finish(format: PNGFormat.linearRGB, channels: 3, as: UInt16.self)
            for i in 0..<s.count { rgb[i] = UInt8(s[i] >> 8) }
        } else {
            let s = try png.finish(format: PNGFormat.linearGray, channels: 1, as: UInt16.self)
            for i in 0..<s.count { let v = UInt8(min(s[i], 255)); rgb[3 * i] = v; rgb[3 * i + 1] = v; rgb[3 * i + 2] = v }
        }
    } else if hasAlpha {
        // Read RGBA and drop alpha: asking libpng for RGB would composite over a background.
        let s = try png.finish(format: PNGFormat.rgba, flags: PNGFormat.flag16BitSRGB,
                              channels: 4, as: UInt8.self)
        for i in 0..<(w * h) { rgb[3 * i] = s[4 * i]; rgb[3 * i + 1] = s[4 * i + 1]; rgb[3 * i + 2] = s[4 * i + 2] }
    } else {
        rgb = try png.finish(format: PNGFormat.rgb, channels: 3, as: UInt8.self)
    }
    return RGBImage(width: w, height: h, pixels: rgb)
}

func decodeLabelPNG(_ data: Data, name: URL) throws -> LabelMap {
    try data.withUnsafeBytes { try decodeLabelPNG($0, name: name) }
}

func decodeLabelPNG(_ raw: UnsafeRawBufferPointer, name: URL) throws -> LabelMap {
    let png = try PNGRead(raw, name: name)
    let w = png.width, h = png.height, fileFormat = png.fileFormat
    var labels: [Int32]
    if fileFormat & PNGFormat.colormap != 0 {
        // Palette PNG: ask for colour-mapped output, which keeps the file's palette indices.
        var colormap = [UInt8](repeating: 0, count: 256 * 4)
        png.image.pointee.colormap_entries = 256
        let indices = try colormap.withUnsafeMutableBytes { cmap in
            try png.finish(format: PNGFormat.rgbaColormap, channels: 1, as: UInt8.self,
                          colormap: cmap.baseAddress)
        }
        labels = indices.map { Int32($0) }
    } else if fileFormat & PNGFormat.color != 0 {
        throw PathError(name, "is an RGB PNG, but a label map must be a gray or palette PNG", period: false)
    } else if fileFormat & PNGFormat.linear != 0 && fileFormat & PNGFormat.alpha == 0 {
        labels = try png.finish(format: PNGFormat.linearGray, channels: 1, as: UInt16.self).map { Int32($0) }
    } else if fileFormat & PNGFormat.alpha != 0 {
        // Gray + alpha (or a tRNS colour): take the gray channel as is, without compositing.
        let s = try png.finish(format: PNGFormat.grayAlpha, flags: PNGFormat.flag16BitSRGB,
                              channels: 2, as: UInt8.self)
        labels = (0..<(w * h)).map { Int32(s[2 * $0]) }
    } else {
        labels = try png.finish(format: PNGFormat.gray, channels: 1, as: UInt8.self).map { Int32($0) }
    }
    return LabelMap(width: w, height: h, labels: labels)
}

func pngEncode<T: FixedWidthInteger>(bytes: [T], width: Int, height: Int, format: UInt32, name: URL) throws -> Data {
    guard width > 0, height > 0, width <= Int(UInt32.max), height <= Int(UInt32.max) else {
        throw PathError(name, "cannot be written: an image of \(width)x\(height) pixels has no pixels", period: false)
    }
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    image.width = UInt32(width)
    image.height = UInt32(height)
    image.format = format
    var size = 0
    var ok = bytes.withUnsafeBytes { raw in
        png_image_write_to_memory(&image, nil, &size, 0, raw.baseAddress, 0, nil)
    }
    guard ok != 0, size > 0 else {
        throw PathError(name, "cannot be encoded as PNG (\(pngMessage(&image)))", period: false)
    }
    var out = Data(count: size)
    ok = out.withUnsafeMutableBytes { dst in
        bytes.withUnsafeBytes { raw in
            png_image_write_to_memory(&image, dst.baseAddress, &size, 0, raw.baseAddress, 0, nil)
        }
    }
    guard ok != 0 else { throw PathError(name, "cannot be encoded as PNG (\(pngMessage(&image)))", period: false) }
    return out.prefix(size)
}

// MARK: - JPEG (TurboJPEG 2.x API: tjDecompress2)

func decodeJPEG(_ data: Data, name: URL) throws -> RGBImage {
    guard let handle = tjInitDecompress() else {
        throw PathError(name, "cannot be decoded: TurboJPEG failed to initialise", period: false)
    }
    defer { tjDestroy(handle) }
    // libjpeg reports missing or corrupt entropy data ("Premature end of JPEG file", "Corrupt JPEG
    // data: premature end of data segment", a frame larger than its data, bad Huffman codes) as
    // warnings and fills the rest with grey. PIL refuses a file that ends early ("image file is
    // truncated") but not one whose frame outruns its data; we refuse both, since part of the image
    // would be filler. The one warning that leaves a complete image is extraneous bytes between
    // markers (common in ImageNet). TurboJPEG 2.1 keeps only the first warning's text.
    func refuseUnlessClean(_ rc: Int32) throws {
        guard rc != 0 else { return }
        let text = String(cString: tjGetErrorStr2(handle))
        if tjGetErrorCode(handle) != Int32(TJERR_WARNING.rawValue) || !text.contains("extraneous bytes before marker") {
            throw PathError(name, "is a truncated or corrupt JPEG (\(text))", period: false)
        }
    }
    return try data.withUnsafeBytes { raw -> RGBImage in
        guard let src = raw.bindMemory(to: UInt8.self).baseAddress else {
            throw PathError(name, "is an empty file", period: false)
        }
        var w: Int32 = 0, h: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        try refuseUnlessClean(tjDecompressHeader3(handle, src, UInt(raw.count), &w, &h, &subsampling, &colorspace))
        // A file cut before its frame header "reads" as 0x0: libjpeg only warned about the early end.
        guard w > 0, h > 0 else { throw PathError(name, "is a truncated or corrupt JPEG (it ends before its frame header)", period: false) }
        guard Int(w) * Int(h) <= maxDecodedPixels else {
            throw PathError(name, "is a JPEG of \(w)x\(h) pixels, which this reader does not accept", period: false)
        }
        let cmyk = colorspace == Int32(TJCS_CMYK.rawValue) || colorspace == Int32(TJCS_YCCK.rawValue)
        let channels = cmyk ? 4 : 3
        let format = cmyk ? TJPF_CMYK : TJPF_RGB
        var out = [UInt8](repeating: 0, count: Int(w) * Int(h) * channels)
        let rc = out.withUnsafeMutableBufferPointer { dst in
            tjDecompress2(handle, src, UInt(raw.count), dst.baseAddress, w, 0, h,
                          Int32(format.rawValue), TJFLAG_ACCURATEDCT)
        }
        try refuseUnlessClean(rc)
        guard cmyk else { return RGBImage(width: Int(w), height: Int(h), pixels: out) }
        // Adobe CMYK JPEGs store inverted inks, so the decoded bytes are (255 - C, ..., 255 - K);
        // Pillow's CMYK -> RGB is R = (255 - C)(255 - K) / 255, rounded as its MULDIV255.
        var rgb = [UInt8](repeating: 0, count: Int(w) * Int(h) * 3)
        for i in 0..<(Int(w) * Int(h)) {
            let k = UInt32(out[4 * i + 3])
            for c in 0..<3 {
                let t = UInt32(out[4 * i + c]) * k + 128
                rgb[3 * i + c] = UInt8(((t >> 8) + t) >> 8)
            }
        }
        return RGBImage(width: Int(w), height: Int(h), pixels: rgb)
    }
}
