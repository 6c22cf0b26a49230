import Foundation
import MAEFormats

/// The resources of `mae-eval all --emit-slurm` (`--partition`, `--time`, `--cpus-per-task`,
/// `--ranks-per-unit`) and the executable the script calls.
public struct SlurmOptions: Sendable {
    public var partition: String?
    /// Slurm's time limit ("30", "2:00:00", "1-00:00:00").
    public var time: String?
    public var cpusPerTask: Int?
    /// Processes per unit: above 1 each unit runs under `srun --ntasks R` (data-parallel over MPI),
    /// or `mpirun -np R` when the element is run by hand outside Slurm.
    public var ranksPerUnit = 1
    /// The `mae-eval` the elements call; nil: this process's executable.
    public var executable: URL?

    public init() {}
}

/// Single-quoted for bash: `it's` -> `'it'\''s'`.
func bashQuoted(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }

/// The `all` arguments that give exactly `units` in their order: every backbone by absolute path
/// with its role, every task spec by absolute path, the seeds of each task, the out dir and report.
func unitArguments(_ units: [TransferUnit], _ o: AllOptions) -> [String] {
    var args: [String] = []
    var seenBackbones: [URL] = []
    for u in units where !seenBackbones.contains(u.backbone.url) {
        seenBackbones.append(u.backbone.url)
        args += [u.backbone.role == "baseline" ? "--baseline" : "--checkpoint", u.backbone.url.standardizedFileURL.path]
    }
    var specs: [String] = []
    for u in units where !specs.contains(u.task.spec.standardizedFileURL.path) { specs.append(u.task.spec.standardizedFileURL.path) }
    args += ["--tasks", specs.joined(separator: ",")]
    if let seeds = o.seeds { args += ["--seeds", seeds.map(String.init).joined(separator: ",")] }
    args += ["--out-dir", o.outDir.standardizedFileURL.path, "--report", o.report.standardizedFileURL.path]
    args += ["--bootstrap-resamples", String(o.bootstrap.resamples), "--bootstrap-detection-resamples", String(o.bootstrap.detectionResamples),
             "--bootstrap-seed", String(o.bootstrap.seed)]
    if let h = o.heads { args += ["--heads", String(h)] }
    return args
}

/// Writes the sbatch script of `units` to `url` (atomically, executable): a job array with one
/// element per unit (`case` on `SLURM_ARRAY_TASK_ID`, each calling `mae-eval all --unit K` with
/// the arguments that rebuild this plan; with ranks > 1 under `srun` in a Slurm allocation and
/// `mpirun --oversubscribe` outside one), which, run with bash outside
/// Slurm (`bash FILE`), submits itself and then the report (`all --report-only`) as a job that
/// depends on every element (`afterok`); `bash FILE report` writes the report directly.
/// - Throws: `TaskError` for a resource that is not one Slurm takes.
public func writeSlurmScript(units: [TransferUnit], options o: AllOptions, to url: URL) throws {
    let s = o.slurm
    if let p = s.partition, p.isEmpty || p.contains(where: { $0.isWhitespace || $0 == "'" || $0 == "\"" }) {
        throw TaskError.badArgument("--partition must be one Slurm partition name (comma-separated names, no spaces), not '\(p)'")
    }
    if let t = s.time, t.isEmpty || !t.allSatisfy({ $0.isNumber || $0 == ":" || $0 == "-" }) {
        throw TaskError.badArgument("--time must be a Slurm time limit such as 30, 2:00:00 or 1-00:00:00, not '\(t)'")
    }
    if let c = s.cpusPerTask, c < 1 { throw TaskError.badArgument("--cpus-per-task must be at least 1, not \(c)") }
    guard s.ranksPerUnit >= 1 else { throw TaskError.badArgument("--ranks-per-unit must be at least 1, not \(s.ranksPerUnit)") }
    guard let executable = (s.executable ?? Bundle.main.executableURL)?.standardizedFileURL else {
        throw TaskError.badArgument("the path of the mae-eval executable is unknown, so no script can call it")
    }
    try prepareOutputFolder(url.deletingLastPathComponent(), flag: "--emit-slurm", of: url)
    let logs = o.outDir.standardizedFileURL.appendingPathComponent("slurm").path
    var resources: [String] = []
    if let p = s.partition { resources.append("--partition=\(p)") }
    if let t = s.time { resources.append("--time=\(t)") }
    if let c = s.cpusPerTask { resources.append("--cpus-per-task=\(c)") }
    resources.append("--ntasks=\(s.ranksPerUnit)")
    // R > 1: srun inside a Slurm allocation, else (a unit run by hand, `SLURM_ARRAY_TASK_ID=K bash FILE`) mpirun.
    let launch = s.ranksPerUnit > 1 ? "${LAUNCH[@]} " : ""
    let launcher = s.ranksPerUnit > 1
        ? "if [ -n \"${SLURM_JOB_ID:-}\" ]; then LAUNCH=(srun --ntasks=\(s.ranksPerUnit)); " +
          "else LAUNCH=(mpirun --oversubscribe -np \(s.ranksPerUnit)); fi\n"
        : ""
    var text = """
        #!/bin/bash
        # mae-eval all --emit-slurm: \(units.count) units of work (backbone x task x seed), one job-array element each.
        # Submit with `bash \(url.lastPathComponent)`: it submits this array, then the report
        # (mae-eval all --report-only) as a job that starts once every element succeeded (afterok).
        # Each element runs `mae-eval all --unit K`: a done unit is skipped, a stopped one resumes.
        # `bash \(url.lastPathComponent) report` writes the report here, without Slurm.
        #SBATCH --job-name=mae-eval-all
        #SBATCH --array=0-\(units.count - 1)
        #SBATCH --output=\(logs)/unit-%a.out

        """
    text += resources.map { "#SBATCH \($0)\n" }.joined()
    text += """
        set -euo pipefail
        MAE_EVAL=\(bashQuoted(executable.path))
        ARGS=(\(unitArguments(units, o).map(bashQuoted).joined(separator: " ")))
        THREADS=()
        if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then THREADS=(--threads "$SLURM_CPUS_PER_TASK"); fi

        if [ "${1:-}" = report ]; then
          exec "$MAE_EVAL" all "${ARGS[@]}" --report-only
        fi
        if [ -z "${SLURM_ARRAY_TASK_ID:-}" ]; then
          SCRIPT="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
          mkdir -p \(bashQuoted(logs))
          JOB=$(sbatch --parsable "$SCRIPT")
          sbatch --dependency=afterok:"${JOB%%;*}" --job-name=mae-eval-report \(resources.filter { !$0.hasPrefix("--ntasks") }.joined(separator: " ")) \\
            --output=\(bashQuoted(logs + "/report.out")) --wrap "bash $(printf '%q' "$SCRIPT") report"
          echo "submitted \(units.count) units as job array ${JOB%%;*} and the report after it"
          exit 0
        fi

        case "$SLURM_ARRAY_TASK_ID" in

        """
    for u in units {
        text += "  \(u.index)) UNIT=\(u.index) ;;  # \(u.task.protocolName): \(u.described)\n"
    }
    text += """
          *) echo "mae-eval all: no unit $SLURM_ARRAY_TASK_ID in this script (0-\(units.count - 1))" >&2; exit 1 ;;
        esac
        \(launcher)exec \(launch)"$MAE_EVAL" all "${ARGS[@]}" ${THREADS[@]+"${THREADS[@]}"} --unit "$UNIT"

        """
    try writeAtomically(Data(text.utf8), to: url)
    chmod(url.path, 0o755)
}
