// libFuzzer entry point for the safetensors parser (compiled together with Sources/MAEFormats by run.sh).
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensors(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let data = Data(bytes: bytes, count: count)
    if let file = try? SafeTensors.parse(data, source: "fuzz") {
        // What parses must convert and re-serialise without trapping, and read back the same.
        for t in file.tensors.values { _ = t.floats; _ = t.int64s }
        if let again = try? file.serialized() {
            guard let back = try? SafeTensors.parse(again, source: "fuzz-again"), back.order == file.order else {
                fatalError("a serialised file did not read back")
            }
        }
    }
    return 0
}
