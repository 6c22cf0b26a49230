import Foundation
import MAEFormats

/// The MAE paper's own numbers (He et al. 2022, ViT-B/16 on ImageNet-1k unless said), for reference.
enum PaperAnchors {
    static func text(protocol p: String, variant: String) -> (mae: String, supervised: String) {
        switch p {
        case "linprobe": return ("68.0 (ViT-B, Table 3)", "—")
        case "finetune" where variant == "full":
            return ("83.6 (ViT-B, Table 3)", "82.3 (from scratch, paper's recipe) / 76.5 (original ViT)")
        case "finetune" where variant == "last 1 blocks": return ("81.0 (ViT-L, Fig. 9; 73.5 linear)", "—")
        default: return ("—", "—")
        }
    }
}

/// A run found under the runs folder.
struct FoundRun {
    var metrics: TransferMetrics
    var run: TransferRun
}

/// A path relative to the current folder when it lies inside it, so a committed report names no machine.
func displayPath(_ path: String) -> String {
    let here = FileManager.default.currentDirectoryPath + "/"
    return path.hasPrefix(here) ? String(path.dropFirst(here.count)) : path
}

/// Mean and sample standard deviation.
func meanStd(_ xs: [Double]) -> (mean: Double, std: Double) {
    let m = xs.reduce(0, +) / Double(max(xs.count, 1))
    guard xs.count > 1 else { return (m, 0) }
    let v = xs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(xs.count - 1)
    return (m, v.squareRoot())
}

/// "82.10" for one seed, "82.10 ± 0.35" for several.
func formatMeanStd(_ xs: [Double]) -> String {
    let (m, s) = meanStd(xs)
    return xs.count > 1 ? String(format: "%.2f ± %.2f", m, s) : String(format: "%.2f", m)
}

/// Every `metrics.json` of a transfer run under `root`; a pretraining run's is skipped.
/// - Throws: `TaskError` when `root` is not a folder, or naming the file when a metrics.json cannot
///   be read, is not JSON, or lacks a field a transfer run's needs (it is never silently left out).
func collectRuns(_ root: URL) throws -> [FoundRun] {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isFolder), isFolder.boolValue else {
        throw TaskError.badArgument("\(root.path) is not a folder of runs" +
                                    (FileManager.default.fileExists(atPath: root.path) ? "" : " (no such folder)"))
    }
    guard let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil) else {
        throw TaskError.badArgument("\(root.path) cannot be listed")
    }
    var found: [FoundRun] = []
    for case let url as URL in walker where url.lastPathComponent == "metrics.json" {
        guard let m = try readTransferMetrics(url) else { continue }
        found.append(FoundRun(metrics: m, run: TransferRun(dir: url.deletingLastPathComponent())))
    }
    return found.sorted { $0.run.dir.path < $1.run.dir.path }
}

/// A transfer run's metrics, or nil for a pretraining run's `metrics.json`.
func readTransferMetrics(_ url: URL) throws -> TransferMetrics? {
    func bad(_ problem: String) -> TaskError { TaskError.badArgument("\(url.path) \(problem), so the report cannot include its run") }
    guard let data = try? Data(contentsOf: url) else { throw bad("cannot be read") }
    guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        throw bad("is not a JSON object (truncated or corrupt)")
    }
    let decoder = JSONDecoder()
    if object["protocol"] == nil, (try? decoder.decode(PretrainMetrics.self, from: data)) != nil { return nil }
    do {
        return try decoder.decode(TransferMetrics.self, from: data)
    } catch DecodingError.keyNotFound(let key, _) {
        throw bad("lacks the field '\(key.stringValue)'")
    } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
        throw bad("has a bad value for '\(context.codingPath.map(\.stringValue).joined(separator: "."))'")
    } catch {
        throw bad("is not a transfer run's metrics")
    }
}

/// One backbone's row in a section: its runs over seeds.
struct BackboneRow {
    var key: String
    var runs: [FoundRun]
    var first: TransferMetrics { runs[0].metrics }
    var name: String { URL(fileURLWithPath: first.checkpoint).deletingPathExtension().lastPathComponent }
    var top1: [Double] { runs.map(\.metrics.top1) }
    var top5: [Double] { runs.map(\.metrics.top5) }
    var mean1: Double { meanStd(top1).mean }
}

/// Renders the markdown report of every run under `runs`; figures go to `figures` (a folder next
/// to the report), linked relative to the report. Returns the markdown and the figures to write.
func renderReport(runs root: URL, figuresFolder: String) throws -> (markdown: String, figures: [(String, LinePlot)]) {
    let found = try collectRuns(root)
    let order = ["linprobe": 0, "knn": 1, "finetune": 2]
    let sections = Dictionary(grouping: found) { "\($0.metrics.task)\u{1}\($0.metrics.evaluation)\u{1}\($0.metrics.variant)" }
        .values.sorted { a, b in
            let (x, y) = (a[0].metrics, b[0].metrics)
            return (order[x.evaluation] ?? 9, x.task, x.variant) < (order[y.evaluation] ?? 9, y.task, y.variant)
        }
    var md = "# Classification transfer: MAE vs supervised backbones\n\n"
    md += "Generated by `mae-eval report` from the runs under `\(displayPath(root.path))/` (each run folder holds `metrics.json` and `log.jsonl`). " +
        "Accuracies are top-1 / top-5 in percent on the val split; with several seeds, mean ± sample std.\n\n"
    guard !found.isEmpty else {
        return (md + "No runs yet: run `mae-eval linprobe`, `mae-eval knn` or `mae-eval finetune`.\n", [])
    }
    var figures: [(String, LinePlot)] = []
    var summary = "## Summary\n\n| task | protocol | MAE top-1 | supervised top-1 | Δ (MAE − sup.) | MAE paper | supervised paper |\n" +
        "|---|---|---|---|---|---|---|\n"
    var body = ""
    for section in sections {
        let m0 = section[0].metrics
        let rows = Dictionary(grouping: section) { "\($0.metrics.checkpoint)|\($0.metrics.checkpointHash)" }
            .map { BackboneRow(key: $0.key, runs: $0.value.sorted { $0.metrics.seed < $1.metrics.seed }) }
            .sorted { ($0.first.role == "baseline" ? 1 : 0, $0.name) < ($1.first.role == "baseline" ? 1 : 0, $1.name) }
        let reference = rows.first { $0.first.role == "baseline" } ?? rows.first { $0.first.method == "supervised" }
        let mae = rows.first { $0.first.method == "mae" && $0.first.role != "baseline" } ?? rows.first { $0.first.method == "mae" }
        let sup = rows.first { $0.first.method == "supervised" && $0.first.role == "baseline" } ?? rows.first { $0.first.method == "supervised" }
        let anchors = PaperAnchors.text(protocol: m0.evaluation, variant: m0.variant)
        let delta = (mae != nil && sup != nil) ? String(format: "%+.2f", mae!.mean1 - sup!.mean1) : "—"
        summary += "| \(m0.task) | \(m0.evaluation) (\(m0.variant)) | \(mae.map { formatMeanStd($0.top1) } ?? "—") | " +
            "\(sup.map { formatMeanStd($0.top1) } ?? "—") | \(delta) | \(anchors.mae) | \(anchors.supervised) |\n"

        body += "## \(m0.task): \(m0.evaluation), \(m0.variant)\n\n"
        body += "Data: \(m0.dataset), \(m0.trainImages) train / \(m0.valImages) val images, \(m0.classes) classes " +
            "(`\(displayPath(m0.trainData))`, `\(displayPath(m0.valData))`).\n\n"
        body += "| backbone | method | role | top-1 | top-5 | Δ top-1 vs \(reference?.name ?? "baseline") | seeds | selected | time (s) |\n"
        body += "|---|---|---|---|---|---|---|---|---|\n"
        for row in rows {
            let d = reference.map { $0.key == row.key ? "—" : String(format: "%+.2f", row.mean1 - $0.mean1) } ?? "—"
            let selected = row.first.selected.map { s in
                ["lr", "weight_decay"].compactMap { k in s[k].map { "\(k == "lr" ? "lr" : "wd") \(String(format: "%g", $0))" } }
                    .joined(separator: ", ")
            } ?? "—"
            let time = meanStd(row.runs.compactMap { $0.metrics.timings["total_s"] }).mean
            body += "| \(row.name) | \(row.first.method) | \(row.first.role) | \(formatMeanStd(row.top1)) | \(formatMeanStd(row.top5)) | " +
                "\(d) | \(row.runs.map { String($0.metrics.seed) }.joined(separator: ", ")) | \(selected) | \(String(format: "%.1f", time)) |\n"
        }
        body += "\nReference (MAE paper): MAE \(anchors.mae); supervised \(anchors.supervised).\n\n"
        let recipes = Array(Set(section.map(\.metrics.recipe))).sorted()
        body += "Recipe: " + recipes.joined(separator: " | ") + ".\n\n"

        // Protocol checks: shared ones plainly, backbone-specific ones with the backbone's name.
        body += "Protocol checks:\n"
        var seen: [String] = []
        for row in rows {
            for check in row.first.protocolChecks {
                let everywhere = rows.allSatisfy { $0.first.protocolChecks.contains(check) }
                let line = everywhere ? check : "\(row.name): \(check)"
                if !seen.contains(line) { seen.append(line) }
            }
        }
        body += seen.map { "- \($0)\n" }.joined() + "\n"

        // Curves of each backbone's first seed.
        let logs = try rows.compactMap { row -> (String, [TransferEpoch])? in
            let log = try row.runs[0].run.readLog()
            guard !log.isEmpty else { return nil }
            return (row.name, log)
        }
        if !logs.isEmpty {
            let slug = String("\(m0.task)-\(m0.evaluation)-\(m0.variant)".lowercased()
                .map { $0.isLetter || $0.isNumber ? $0 : "-" }).split(separator: "-").joined(separator: "-")
            let loss = LinePlot(title: "\(m0.task) \(m0.evaluation) (\(m0.variant)): training loss", xLabel: "epoch",
                                yLabel: "loss", series: logs.map { PlotSeries(name: $0.0, points: $0.1.map { (Double($0.epoch), $0.trainLoss) }) })
            let acc = LinePlot(title: "\(m0.task) \(m0.evaluation) (\(m0.variant)): val top-1", xLabel: "epoch", yLabel: "top-1 %",
                               series: logs.map { PlotSeries(name: $0.0, points: $0.1.compactMap { e in e.valTop1.map { (Double(e.epoch), $0) } }) })
            figures.append(("\(slug)-loss.png", loss))
            figures.append(("\(slug)-val.png", acc))
            body += "![training loss](\(figuresFolder)/\(slug)-loss.png) ![val top-1](\(figuresFolder)/\(slug)-val.png)\n\n"
            body += "Curves: seed \(rows[0].runs[0].metrics.seed) of each backbone" +
                (m0.evaluation == "linprobe" && m0.variant.hasPrefix("cached") ? " (the selected head retrained on all of train)" : "") + ".\n\n"
        }
    }
    md += summary + "\nMAE paper numbers are ViT-B/16 (ViT-L where marked) on ImageNet-1k at 224 px; they anchor the protocol, " +
        "they are not comparable to a small model on a small dataset.\n\n" + body
    return (md, figures)
}

/// The folder of a report's figures: `<out without .md>-figures/` beside it.
func reportFiguresFolder(_ out: URL) -> URL {
    out.deletingLastPathComponent().appendingPathComponent(out.deletingPathExtension().lastPathComponent + "-figures")
}

/// Creates the folder of the report `out` and checks that the report and its figures folder can be
/// written, so a command can refuse a bad `flag` before its work.
public func prepareReportOutput(_ out: URL, flag: String) throws {
    try prepareOutputFolder(out.deletingLastPathComponent(), flag: flag, of: out)
    try checkOutputFile(out, flag: flag)
    var isFolder: ObjCBool = false
    let figures = reportFiguresFolder(out)
    if FileManager.default.fileExists(atPath: figures.path, isDirectory: &isFolder), !isFolder.boolValue {
        throw TaskError.badArgument("\(flag) \(out.path) puts its figures in \(figures.path), which is a file, not a folder")
    }
}

/// Writes the report of the runs under `runs` to `out` (atomically) and its figures to
/// `<out without .md>-figures/`.
public func writeReport(runs: URL, to out: URL) throws {
    let folderName = reportFiguresFolder(out).lastPathComponent
    let (markdown, figures) = try renderReport(runs: runs, figuresFolder: folderName)
    try prepareReportOutput(out, flag: "the report")
    let figureDir = reportFiguresFolder(out)
    if !figures.isEmpty { try prepareOutputFolder(figureDir, flag: "the report's figures folder") }
    for (name, plot) in figures { try plot.write(to: figureDir.appendingPathComponent(name)) }
    try writeAtomically(Data(markdown.utf8), to: out)
}
