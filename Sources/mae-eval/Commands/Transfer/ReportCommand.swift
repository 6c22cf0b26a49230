import ArgumentParser
import Foundation
import MAETasks

struct Report: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collect classification-transfer runs into a markdown report.",
        discussion: """
            Reads every metrics.json under --runs (linprobe, knn, finetune runs) and writes one table per task \
            and protocol variant: each backbone, MAE vs supervised with the delta, mean ± std over seeds, the \
            recipe, the MAE paper's numbers, the protocol checks, and PNG curves from log.jsonl (in a folder \
            next to the report). The report is written atomically.
            """)

    @Option(help: "Folder of run folders (relative to the current folder).")
    var runs = URL(fileURLWithPath: TransferOptions.defaultRunsPath)
    @Option(help: "Markdown file to write (for the default --runs: ./Reports/classification.md, the committed report from the repository root).")
    var out = URL(fileURLWithPath: TransferOptions.defaultReportPath(runs: TransferOptions.defaultRunsPath))

    func call() throws -> [String] {
        // --out is checked before the runs are read (writeReport's own check names "the report").
        try prepareReportOutput(out, flag: "--out")
        try writeReport(runs: runs, to: out)
        return [out.relativePath]
    }
}
