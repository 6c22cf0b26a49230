import Foundation
import COpenBLAS

/// What the CPU (and the OS, for the register state) supports, as far as OpenBLAS's kernel choice cares.
public struct CPUFeatures: Sendable, Equatable {
    /// AVX2 and FMA.
    public var avx2FMA: Bool
    /// AVX-512 F, BW, VL and DQ.
    public var avx512: Bool
    /// AVX512-BF16 (with `avx512`).
    public var avx512BF16: Bool
    /// An AMD CPU ("AuthenticAMD").
    public var amd: Bool

    public init(avx2FMA: Bool, avx512: Bool = false, avx512BF16: Bool = false, amd: Bool = false) {
        self.avx2FMA = avx2FMA
        self.avx512 = avx512
        self.avx512BF16 = avx512BF16
        self.amd = amd
    }

    /// This machine's, from cpuid and xgetbv.
    public static let current: CPUFeatures = {
        let bits = mae_cpu_features()
        func has(_ flag: Int) -> Bool { Int(bits) & flag != 0 }
        return CPUFeatures(avx2FMA: has(MAE_CPU_AVX2_FMA), avx512: has(MAE_CPU_AVX512),
                           avx512BF16: has(MAE_CPU_AVX512_BF16), amd: has(MAE_CPU_AMD))
    }()

    /// The widest vector ISA: "AVX-512 + BF16", "AVX-512", "AVX2 + FMA" or "SSE/AVX (no AVX2)".
    public var bestISA: String {
        if avx512 { return avx512BF16 ? "AVX-512 + BF16" : "AVX-512" }
        return avx2FMA ? "AVX2 + FMA" : "SSE/AVX (no AVX2)"
    }

    /// The OpenBLAS core that fits: Cooperlake, SkylakeX, Zen (AMD) or Haswell; nil without AVX2 + FMA.
    public var nativeCore: String? {
        if avx512 { return avx512BF16 ? "Cooperlake" : "SkylakeX" }
        guard avx2FMA else { return nil }
        return amd ? "Zen" : "Haswell"
    }
}

/// How OpenBLAS's kernel was chosen at start-up.
public enum KernelChoice: Sendable, Equatable {
    /// Left as the library picked it.
    case keep
    /// Switch to this OpenBLAS core name, from the one the library picked.
    case switchTo(String)

    /// OpenBLAS 0.3.21's x86-64 core names (`driver/others/dynamic.c`) whose kernels use no AVX2: on a CPU
    /// with AVX2 + FMA they are a fallback (the library does not know the CPU), never the right choice.
    public static let genericCores: Set<String> = [
        "katmai", "coppermine", "northwood", "prescott", "banias", "atom", "core2", "penryn", "dunnington",
        "nehalem", "athlon", "opteron", "opteron_sse3", "barcelona", "nano", "sandybridge", "bobcat",
        "bulldozer", "piledriver", "steamroller",
    ]

    /// What to do at start-up: switch only when the user set no `OPENBLAS_CORETYPE` (`userCoreType` nil or
    /// empty), the library runs a generic core (`genericCores`) and the CPU has a native one.
    public static func decide(core: String, cpu: CPUFeatures, userCoreType: String?) -> KernelChoice {
        guard userCoreType?.isEmpty ?? true,
              genericCores.contains(core.trimmingCharacters(in: .whitespaces).lowercased()),
              let native = cpu.nativeCore else { return .keep }
        return .switchTo(native)
    }
}

extension BLAS {
    /// Set in the environment of a process that mae-eval re-executed to change the kernel:
    /// "<core the library picked>><core set>", e.g. "Prescott>Cooperlake". It tells the new process that
    /// `OPENBLAS_CORETYPE` is ours, not the user's, and that it must not re-execute again.
    static let reexecMarker = "MAE_EVAL_BLAS_SWITCHED"

    /// How the running kernel was chosen: "library default", "OPENBLAS_CORETYPE set by the user" or
    /// "switched from Prescott by mae-eval". Makes the choice first if nothing has (in process only).
    public static var kernelChosenBy: String { nativeKernel(mayReexec: false) }

    /// Makes OpenBLAS run the kernel for this CPU when it fell back to a generic one (see `KernelChoice`);
    /// call it first thing in `main`, before any product or thread. Switches in process
    /// (`gotoblas_dynamic_quit`/`init`) or, when the library lacks those, re-executes `/proc/self/exe` with
    /// the same arguments once. A user's own `OPENBLAS_CORETYPE` is never changed. Idempotent: only the first
    /// call (or the first product, `BLAS.configure` and `BLASInfo.current`, which switch in process but never
    /// re-execute) decides.
    public static func ensureNativeKernel() { _ = nativeKernel(mayReexec: true) }

    private static let selectionLock = NSLock()
    nonisolated(unsafe) private static var selection: String?

    private static func nativeKernel(mayReexec: Bool) -> String {
        selectionLock.lock()
        defer { selectionLock.unlock() }
        if let selection { return selection }
        let made = selectNativeKernel(mayReexec: mayReexec)
        selection = made
        return made
    }

    private static func selectNativeKernel(mayReexec: Bool) -> String {
        let env = ProcessInfo.processInfo.environment
        if let marker = env[reexecMarker] {
            unsetenv(reexecMarker)
            let cores = marker.split(separator: ">").map(String.init)
            if cores.count == 2, env["OPENBLAS_CORETYPE"] == cores[1] {
                // We re-executed ourselves: OPENBLAS_CORETYPE is ours. Clear it so child processes choose afresh.
                unsetenv("OPENBLAS_CORETYPE")
                return "switched from \(cores[0]) by mae-eval"
            }
        }
        if env["OPENBLAS_CORETYPE"]?.isEmpty == false { return "OPENBLAS_CORETYPE set by the user" }
        let core = currentCoreName()
        guard case .switchTo(let native) = KernelChoice.decide(core: core, cpu: .current, userCoreType: nil) else {
            return "library default"
        }
        if switchKernel(to: native) { return "switched from \(core) by mae-eval" }
        guard mayReexec else { return "library default" }
        setenv("OPENBLAS_CORETYPE", native, 1)
        setenv(reexecMarker, "\(core)>\(native)", 1)
        execv("/proc/self/exe", CommandLine.unsafeArgv)
        // exec failed: run on as we are, with the environment as the user gave it.
        unsetenv(reexecMarker)
        unsetenv("OPENBLAS_CORETYPE")
        return "library default"
    }

    /// The OpenBLAS core name in use ("Haswell", "Prescott").
    public static func currentCoreName() -> String {
        openblas_get_corename().map { String(cString: $0) } ?? "unknown"
    }

    /// Re-runs OpenBLAS's kernel choice in this process with `OPENBLAS_CORETYPE=core`, keeping its thread
    /// count; the variable is restored afterwards. False when the library cannot re-run the choice. Only
    /// safe before any product runs or while none is running.
    @discardableResult
    public static func switchKernel(to core: String) -> Bool {
        let threads = openblas_get_num_threads()
        let previous = getenv("OPENBLAS_CORETYPE").map { String(cString: $0) }
        setenv("OPENBLAS_CORETYPE", core, 1)
        defer {
            if let previous { setenv("OPENBLAS_CORETYPE", previous, 1) } else { unsetenv("OPENBLAS_CORETYPE") }
        }
        guard mae_openblas_rerun_core_choice() != 0 else { return false }
        openblas_set_num_threads(threads)
        return true
    }
}
