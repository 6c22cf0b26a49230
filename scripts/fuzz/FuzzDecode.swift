// libFuzzer harness for the data layer's parsers: PNG, JPEG, label maps, COCO JSON and RLE.
// Build and run with scripts/fuzz/run.sh. The first input byte picks the parser.
import Foundation

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
        // COCO instances JSON, and every RLE in it.
        if let file = try? JSONDecoder().decode(COCOInstancesFile.self, from: data) {
            for a in file.annotations where (a.segmentation.map { "\($0)".count } ?? 0) < 10_000 {
                _ = a.segmentation?.decodedRLE()
            }
        }
    default:
        // Compressed RLE strings directly.
        _ = COCOMask.decompress(String(decoding: data, as: UTF8.self))
    }
    return 0
}
