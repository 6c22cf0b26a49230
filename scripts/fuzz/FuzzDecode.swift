// libFuzzer harness for the data layer's parsers: PNG, JPEG, label maps, COCO JSON (through
// MAECOCO, as COCODetectionDataset reads it) and compressed RLE. Build and run with
// scripts/fuzz/run.sh. The first input byte picks the parser.
import Foundation
import MAECOCO

/// Where COCO inputs are written, since MAECOCO reads instances files from disk.
let cocoInput = URL(fileURLWithPath: NSTemporaryDirectory())
    .appendingPathComponent("mae-fuzz-\(ProcessInfo.processInfo.processIdentifier).json")

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOneInput(_ bytes: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let data = Data(bytes: bytes + 1, count: size - 1)
    let name = URL(fileURLWithPath: "fuzz-input")
    switch bytes[0] % 3 {
    case 0:
        // Images: both codecs by magic bytes, then the label-map reader.
        if let image = try? ImageCodec.decode(data, name: name) {
            precondition(image.pixels.count == image.width * image.height * 3)
        }
        if data.starts(with: pngSignature) { _ = try? decodeLabelPNG(data, name: name) }
    case 1:
        // COCO instances JSON, and every mask in it decoded at its image's size. Polygon
        // rasterisation walks the outline in 1/5 pixels (as pycocotools), so it is bounded here.
        // Foundation's Data(contentsOf:) leaks its buffer on an empty file (LeakSanitizer flags
        // it), so empty inputs stop here.
        guard !data.isEmpty, (try? data.write(to: cocoInput)) != nil, let file = try? COCODataset(contentsOf: cocoInput) else { return 0 }
        let sizes = Dictionary(file.images.map { ($0.id, ($0.height, $0.width)) }, uniquingKeysWith: { a, _ in a })
        for a in file.annotations {
            guard let segmentation = a.segmentation, let (h, w) = sizes[a.imageId], h >= 0, w >= 0, h * w <= 1 << 16 else { continue }
            if case .polygons(let p) = segmentation, p.joined().contains(where: { abs($0) > 1000 }) { continue }
            let rle = segmentation.rle(imageHeight: h, imageWidth: w)
            if rle.height * rle.width <= 1 << 16 { _ = rle.decodeRowMajor() }
        }
    default:
        // Compressed RLE strings directly.
        if let rle = RLE(compressedCounts: String(decoding: data, as: UTF8.self), height: 0, width: 0) {
            _ = rle.area
        }
    }
    return 0
}
