// libFuzzer entry point for torch checkpoints (compiled together with Sources/MAEFormats by run.sh).
// Inputs starting with "PK" go through the zip reader and the unpickler; anything else is fed to the
// unpickler directly as data.pkl, with every storage reading as zeros, so the fuzzer need not build zips.
import Foundation

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTorch(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let data = Data(bytes: bytes, count: count)
    if data.starts(with: [0x50, 0x4B]) {
        if let (value, _) = try? TorchCheckpoint.parse(data, source: "fuzz") {
            _ = value.summary()
            _ = try? CheckpointFile.fromPickle(value, source: "fuzz")
        }
    } else {
        var unpickler = Unpickler(data, source: "fuzz", tensorBudget: 1 << 22) { _, dtype, count in
            guard count <= 1 << 20 else { throw FormatError("fuzz", "storage too large for the harness") }
            return Data(count: count * dtype.itemSize)
        }
        if let value = try? unpickler.run() {
            _ = value.summary()
            if case .dict = value, let file = try? CheckpointFile.fromPickle(value, source: "fuzz") {
                let (weights, _) = canonicalize(file.tensors)
                _ = try? inferArchitecture(weights)
            }
        }
    }
    return 0
}
