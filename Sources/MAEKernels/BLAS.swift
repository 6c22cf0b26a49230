import Foundation
import COpenBLAS

/// Matrix products through OpenBLAS `cblas_sgemm`, row-major, split over our own workers.
public enum BLAS {
    /// Makes OpenBLAS single-threaded (parallelism comes from `Parallel`, see there for why), once its
    /// kernel is chosen (`BLAS.kernelChosenBy`). Called once before the first product; harmless to call again.
    public static func configure() {
        _ = kernelChosenBy
        openblas_set_num_threads(1)
    }

    nonisolated(unsafe) static var configured: Bool = {
        configure()
        return true
    }()

    /// C[M,N] = alpha * op(A) * op(B) + beta * C, row-major; op(A) is [M,K], op(B) is [K,N].
    /// `transA`: A is stored [K,M] (lda >= M); `transB`: B is stored [N,K] (ldb >= K).
    /// The product is split over rows of C (or columns when C is wide and short) across workers.
    public static func gemm(transA: Bool = false, transB: Bool = false,
                            m: Int, n: Int, k: Int, alpha: Float = 1,
                            a: UnsafePointer<Float>, lda: Int,
                            b: UnsafePointer<Float>, ldb: Int,
                            beta: Float = 0,
                            c: UnsafeMutablePointer<Float>, ldc: Int) {
        Profiler.measure(.gemm) {
            gemmSplit(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                      b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }

    private static func gemmSplit(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                                  a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        _ = configured
        guard m > 0, n > 0 else { return }
        let ta = transA ? CblasTrans : CblasNoTrans
        let tb = transB ? CblasTrans : CblasNoTrans
        let flops = m * n * k
        let parts = flops < 1 << 21 ? 1 : Parallel.workers
        if parts == 1 {
            cblas_sgemm(CblasRowMajor, ta, tb, Int32(m), Int32(n), Int32(k), alpha,
                        a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
            return
        }
        if m >= n || m >= 64 * parts {
            Parallel.forRanges(m, grain: 16) { r in
                let aPart = transA ? a + r.lowerBound : a + r.lowerBound * lda
                cblas_sgemm(CblasRowMajor, ta, tb, Int32(r.count), Int32(n), Int32(k), alpha,
                            aPart, Int32(lda), b, Int32(ldb), beta, c + r.lowerBound * ldc, Int32(ldc))
            }
        } else {
            Parallel.forRanges(n, grain: 16) { r in
                let bPart = transB ? b + r.lowerBound * ldb : b + r.lowerBound
                cblas_sgemm(CblasRowMajor, ta, tb, Int32(m), Int32(r.count), Int32(k), alpha,
                            a, Int32(lda), bPart, Int32(ldb), beta, c + r.lowerBound, Int32(ldc))
            }
        }
    }

    /// Single-threaded product for use inside a `Parallel` loop (attention per batch x head).
    @inline(__always)
    public static func gemmSerial(transA: Bool = false, transB: Bool = false,
                                  m: Int, n: Int, k: Int, alpha: Float = 1,
                                  a: UnsafePointer<Float>, lda: Int,
                                  b: UnsafePointer<Float>, ldb: Int,
                                  beta: Float = 0,
                                  c: UnsafeMutablePointer<Float>, ldc: Int) {
        _ = configured
        cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

/// The matrix library linked in and what it runs on, as `--version`, `bench` and metrics.json state it.
public struct BLASInfo: Sendable, Equatable, Codable {
    /// "OpenBLAS".
    public var library: String
    /// The library's version ("0.3.26"), or "unknown" when its build string does not say.
    public var version: String
    /// The compute kernel chosen for this CPU ("Haswell", "Zen").
    public var kernel: String
    /// How the kernel was chosen: "library default", "OPENBLAS_CORETYPE set by the user",
    /// "switched from Prescott by mae-eval" (see `BLAS.ensureNativeKernel`); "unknown" in older files.
    public var kernelChosenBy: String
    /// The CPU's widest vector ISA ("AVX-512 + BF16", "AVX2 + FMA"); "unknown" in older files.
    public var cpuISA: String

    enum CodingKeys: String, CodingKey {
        case library, version, kernel, kernelChosenBy = "kernel_chosen_by", cpuISA = "cpu_isa"
    }

    /// What `openblas_get_config()` and `openblas_get_corename()` report, once the kernel is chosen
    /// (`BLAS.kernelChosenBy`).
    public static let current: BLASInfo = {
        let kernelChosenBy = BLAS.kernelChosenBy
        let config = openblas_get_config().map { String(cString: $0) } ?? ""
        return BLASInfo(config: config, kernel: BLAS.currentCoreName(), kernelChosenBy: kernelChosenBy,
                        cpuISA: CPUFeatures.current.bestISA)
    }()

    /// Library and version from a build string of the form "OpenBLAS 0.3.26 NO_AFFINITY Haswell MAX_THREADS=64".
    public init(config: String, kernel: String, kernelChosenBy: String = "unknown", cpuISA: String = "unknown") {
        let words = config.split(separator: " ").map(String.init)
        library = words.first ?? "OpenBLAS"
        version = words.count > 1 && words[1].first?.isNumber == true ? words[1] : "unknown"
        let k = kernel.trimmingCharacters(in: .whitespaces)
        self.kernel = k.isEmpty ? "unknown" : k
        self.kernelChosenBy = kernelChosenBy
        self.cpuISA = cpuISA
    }

    /// Reads files written before `kernel_chosen_by` and `cpu_isa` existed too.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        library = try c.decode(String.self, forKey: .library)
        version = try c.decode(String.self, forKey: .version)
        kernel = try c.decode(String.self, forKey: .kernel)
        kernelChosenBy = try c.decodeIfPresent(String.self, forKey: .kernelChosenBy) ?? "unknown"
        cpuISA = try c.decodeIfPresent(String.self, forKey: .cpuISA) ?? "unknown"
    }

    /// "OpenBLAS 0.3.26, kernel Haswell".
    public var summary: String { "\(library) \(version), kernel \(kernel)" }

    /// How the kernel was chosen and what the CPU offers: "library default; CPU AVX-512 + BF16".
    public var choice: String { "\(kernelChosenBy); CPU \(cpuISA)" }
}
