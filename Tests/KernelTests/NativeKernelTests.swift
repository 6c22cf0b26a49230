import Foundation
import XCTest
import COpenBLAS
@testable import MAEKernels

final class NativeKernelTests: XCTestCase {
    // CPUs as cpuid describes them.
    let emeraldRapids = CPUFeatures(avx2FMA: true, avx512: true, avx512BF16: true)
    let skylakeSP = CPUFeatures(avx2FMA: true, avx512: true)
    let haswell = CPUFeatures(avx2FMA: true)
    let zen3 = CPUFeatures(avx2FMA: true, amd: true)
    let sandyBridge = CPUFeatures(avx2FMA: false)

    func testDecisionTable() {
        let cases: [(core: String, cpu: CPUFeatures, user: String?, expected: KernelChoice, why: String)] = [
            ("Prescott", emeraldRapids, nil, .switchTo("Cooperlake"), "Emerald Rapids unknown to 0.3.21"),
            ("Prescott", skylakeSP, nil, .switchTo("SkylakeX"), "AVX-512 without BF16"),
            ("Prescott", haswell, nil, .switchTo("Haswell"), "AVX2-only CPU"),
            ("Nehalem", haswell, "", .switchTo("Haswell"), "an empty OPENBLAS_CORETYPE is no choice"),
            ("Sandybridge", zen3, nil, .switchTo("Zen"), "AMD with AVX2"),
            ("PRESCOTT", emeraldRapids, nil, .switchTo("Cooperlake"), "names compare as OpenBLAS does, ignoring case"),
            ("Prescott", emeraldRapids, "Prescott", .keep, "the user's own OPENBLAS_CORETYPE"),
            ("Haswell", emeraldRapids, "Haswell", .keep, "the user's own OPENBLAS_CORETYPE"),
            ("Haswell", emeraldRapids, nil, .keep, "a known AVX2 kernel"),
            ("Cooperlake", emeraldRapids, nil, .keep, "already native"),
            ("Zen", zen3, nil, .keep, "already native"),
            ("Excavator", zen3, nil, .keep, "a known AVX2 kernel"),
            ("Prescott", sandyBridge, nil, .keep, "no AVX2: nothing better to pick"),
            ("Sandybridge", sandyBridge, nil, .keep, "the right kernel for an AVX-only CPU"),
            ("Unknown", emeraldRapids, nil, .keep, "a name we do not know is left alone"),
        ]
        for c in cases {
            XCTAssertEqual(KernelChoice.decide(core: c.core, cpu: c.cpu, userCoreType: c.user), c.expected,
                           "\(c.core), \(c.cpu), user \(c.user ?? "unset"): \(c.why)")
        }
    }

    func testBestISANamesTheWidestVectorUnit() {
        XCTAssertEqual(emeraldRapids.bestISA, "AVX-512 + BF16")
        XCTAssertEqual(skylakeSP.bestISA, "AVX-512")
        XCTAssertEqual(zen3.bestISA, "AVX2 + FMA")
        XCTAssertEqual(sandyBridge.bestISA, "SSE/AVX (no AVX2)")
    }

    /// cpuid + xgetbv agree with the flags the kernel reports in /proc/cpuinfo (which it clears when the
    /// OS does not save the registers).
    func testCPUFeaturesMatchProcCPUInfo() throws {
        let text = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let line = try XCTUnwrap(text.split(separator: "\n").first { $0.hasPrefix("flags") })
        let flags = Set(line.split(separator: ":", maxSplits: 1)[1].split(separator: " ").map(String.init))
        let cpu = CPUFeatures.current
        XCTAssertEqual(cpu.avx2FMA, flags.isSuperset(of: ["avx2", "fma"]))
        XCTAssertEqual(cpu.avx512, flags.isSuperset(of: ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq"]))
        XCTAssertEqual(cpu.avx512BF16, cpu.avx512 && flags.contains("avx512_bf16"))
        XCTAssertEqual(cpu.amd, text.contains("AuthenticAMD"))
    }

    func testBLASInfoRecordsTheChoiceAndReadsOlderFiles() throws {
        let info = BLASInfo.current
        XCTAssertEqual(info.cpuISA, CPUFeatures.current.bestISA)
        XCTAssertTrue(["library default", "OPENBLAS_CORETYPE set by the user"].contains(info.kernelChosenBy)
                      || info.kernelChosenBy.hasPrefix("switched from "), info.kernelChosenBy)
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: JSONEncoder().encode(info)) as? [String: String])
        XCTAssertEqual(json["kernel_chosen_by"], info.kernelChosenBy)
        XCTAssertEqual(json["cpu_isa"], info.cpuISA)
        XCTAssertEqual(try JSONDecoder().decode(BLASInfo.self, from: JSONEncoder().encode(info)), info)
        let old = try JSONDecoder().decode(BLASInfo.self, from: Data(#"{"library":"OpenBLAS","version":"0.3.21","kernel":"Haswell"}"#.utf8))
        XCTAssertEqual(old, BLASInfo(config: "OpenBLAS 0.3.21", kernel: "Haswell"))
        XCTAssertEqual(old.kernelChosenBy, "unknown")
    }

    // MARK: - The real switch, in a child process

    static let childMarker = "MAE_TEST_KERNEL_SWITCH_CHILD"

    /// Runs `testSwitchInChildProcess` in a copy of this test binary started with OPENBLAS_CORETYPE=Prescott,
    /// so OpenBLAS loads its generic kernel there and this process's kernel is left alone.
    func testKernelSwitchesInProcess() throws {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        child.arguments = ["KernelTests.NativeKernelTests/testSwitchInChildProcess"]
        var env = ProcessInfo.processInfo.environment
        env["OPENBLAS_CORETYPE"] = "Prescott"
        env[Self.childMarker] = "1"
        child.environment = env
        let out = Pipe()
        child.standardOutput = out
        child.standardError = out
        try child.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        child.waitUntilExit()
        XCTAssertEqual(child.terminationStatus, 0, text)
        XCTAssertTrue(text.contains("Executed 1 test"), text)
        XCTAssertFalse(text.contains("skipped"), text)
    }

    /// Only inside the child of `testKernelSwitchesInProcess`: Prescott -> Haswell -> this CPU's native core,
    /// each reported by `openblas_get_corename()`, with the same sgemm result and thread count.
    func testSwitchInChildProcess() throws {
        guard ProcessInfo.processInfo.environment[Self.childMarker] != nil else {
            throw XCTSkip("runs in the child process of testKernelSwitchesInProcess")
        }
        XCTAssertEqual(BLAS.currentCoreName(), "Prescott")
        XCTAssertEqual(BLAS.kernelChosenBy, "OPENBLAS_CORETYPE set by the user")
        let (m, n, k) = (96, 80, 200)
        let a = (0..<m * k).map { Float(($0 * 7919) % 211) / 211 - 0.5 }
        let b = (0..<k * n).map { Float(($0 * 104729) % 197) / 197 - 0.5 }
        func product() -> [Float] {
            var c = [Float](repeating: 0, count: m * n)
            BLAS.gemmSerial(m: m, n: n, k: k, a: a, lda: k, b: b, ldb: n, c: &c, ldc: n)
            return c
        }
        let before = product()
        let threads = openblas_get_num_threads()
        var targets = ["Haswell"]
        if case .switchTo(let native) = KernelChoice.decide(core: "Prescott", cpu: .current, userCoreType: nil) {
            targets.append(native)
        }
        for core in targets {
            XCTAssertTrue(BLAS.switchKernel(to: core))
            XCTAssertEqual(BLAS.currentCoreName(), core)
            XCTAssertEqual(openblas_get_num_threads(), threads)
            XCTAssertEqual(ProcessInfo.processInfo.environment["OPENBLAS_CORETYPE"], "Prescott", "restored")
            let after = product()
            let worst = zip(before, after).map { abs($0 - $1) }.max() ?? 0
            XCTAssertLessThan(worst, 1e-4, core)
            XCTAssertNotEqual(before.map(abs).max() ?? 0, 0)
        }
    }
}
