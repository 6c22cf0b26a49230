// libFuzzer entry point for the task-spec parser (compiled together with Sources/MAETasks, Yams and
// libyaml by run.sh). A first line `#set KEY=VALUE` is also applied as a --set override.
import Foundation
import Yams

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTaskSpec(_ bytes: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    guard let text = String(data: Data(bytes: bytes, count: count), encoding: .utf8) else { return 0 }
    var overrides: [String] = []
    if text.hasPrefix("#set "), let end = text.firstIndex(of: "\n") {
        overrides = [String(text[text.index(text.startIndex, offsetBy: 5)..<end])]
    }
    guard let spec = try? TaskSpec.parse(text, source: "fuzz", overrides: overrides) else { return 0 }
    // What parses must write out and read back as a valid spec (config.yaml holds it this way).
    _ = spec.recipeSummary
    guard let again = try? YAMLEncoder().encode(spec) else { fatalError("a parsed spec did not encode") }
    do { _ = try TaskSpec.parse(again, source: "fuzz-again") } catch {
        fatalError("a parsed spec did not read back: \(error)\n\(again)")
    }
    return 0
}
