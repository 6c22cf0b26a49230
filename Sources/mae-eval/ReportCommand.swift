import ArgumentParser
import Foundation
import MAETasks

struct Report: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Collect classification-transfer runs into a markdown report.",
        discussion: """
            Reads every metrics.json under --runs (linprobe, knn, finetune runs) and writes one table per task \
            and protocol variant: each backbone, MAE vs supervised with the delta, mean ± std over seeds, the \
            recipe, the MAE paper's numbers, the protocol checks, and PNG curves from log.jsonl (in a folder \
            next to the report). The report is written atomically.
            """)

    @Option(help: "Folder of run folders (relative to the current folder).")
    var runs = TransferOptions.defaultRunsPath
    @Option(help: "Markdown file to write (for the default --runs: ./Reports/classification.md, the committed report from the repository root).")
    var out = TransferOptions.defaultReportPath(runs: TransferOptions.defaultRunsPath)

    func run() throws {
        try runCLI {
            try prepareReportOutput(URL(fileURLWithPath: out), flag: "--out")
            try writeReport(runs: URL(fileURLWithPath: runs), to: URL(fileURLWithPath: out))
        }
        print(out)
    }
}
