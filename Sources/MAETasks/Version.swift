import Foundation
import MAEKernels

/// The one place the version lives: `--version`, metrics.json (`mae_eval_version`, `blas`) and
/// `bench`'s JSON line read it from here.
public enum MAEEvalVersion {
    /// The release number.
    public static let number = "0.1.0"

    /// The git commit the binary was built from, when the environment says (`MAE_EVAL_COMMIT`, e.g.
    /// set by a packaging script to `git rev-parse --short HEAD`); nothing is read at build time.
    public static var commit: String { commit(environment: ProcessInfo.processInfo.environment) }

    static func commit(environment: [String: String]) -> String {
        let value = environment["MAE_EVAL_COMMIT"]?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        return value.isEmpty ? "unknown" : value
    }

    /// "0.1.0 (3f2a9c1)" or "0.1.0 (unknown)": metrics.json's `mae_eval_version`.
    public static var described: String { "\(number) (\(commit))" }

    /// The CPU's model name (`/proc/cpuinfo`) and the cores this process may use.
    public static var cpu: String {
        let text = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let name = text.split(separator: "\n").first { $0.hasPrefix("model name") }
            .flatMap { $0.split(separator: ":", maxSplits: 1).last }
            .map { $0.trimmingCharacters(in: .whitespaces) }
        let cores = ProcessInfo.processInfo.activeProcessorCount
        return "\(name?.isEmpty == false ? name! : "unknown CPU"), \(cores) core\(cores == 1 ? "" : "s")"
    }

    /// What `mae-eval --version` prints: the version, the BLAS library (with how its kernel was chosen),
    /// the bf16 library (`--precision bf16`: our AVX512-BF16 kernel or oneDNN, the ISA it uses here and its kernel) and the CPU,
    /// one line each.
    public static var text: String {
        let blas = BLASInfo.current
        return "mae-eval \(described)\nBLAS: \(blas.summary) (\(blas.choice))\nbf16: \(BF16Info.current.summary)\nCPU: \(cpu)"
    }
}
