import Foundation
import MAEDistributed
import MAEFormats
import MAEJSON

/// One named number of a run (percent), as a report column shows it.
struct ReportMetric: Equatable {
    /// The run's name for it ("top1", "APbox", "mIoU").
    var key: String
    /// The column's label ("top-1", "APbox", "mIoU").
    var label: String
}

/// What the report shows for one kind of task: its metrics in column order, the protocol's primary
/// ones (the summary's columns), which are compared with the reference backbone, and the words
/// around them. Classification's is the report as it was before other tasks had one.
struct ReportKind: Equatable {
    var name: String
    /// "Classification transfer", the report's title when it holds only this kind.
    var title: String
    /// The sentence fragment saying what the numbers are.
    var units: String
    var metrics: [ReportMetric]
    /// The summary's metrics (classification top-1; detection APbox and APmask; segmentation mIoU).
    var primary: [String]
    /// The metrics that get a Δ column against the reference backbone in a section's table.
    var compared: [String]
    /// Whether a section's table has the cached probe's selected hyperparameters.
    var showsSelected: Bool
    /// Whether runs log `TransferEpoch`s whose loss and val top-1 become curves.
    var hasCurves: Bool
    /// What the summary's paper columns are.
    var paperNote: String

    static let classification = ReportKind(
        name: "classification", title: "Classification transfer",
        units: "Accuracies are top-1 / top-5 in percent on the val split",
        metrics: [ReportMetric(key: "top1", label: "top-1"), ReportMetric(key: "top5", label: "top-5")],
        primary: ["top1"], compared: ["top1"], showsSelected: true, hasCurves: true,
        paperNote: "MAE paper numbers are ViT-B/16 (ViT-L where marked) on ImageNet-1k at 224 px; they anchor the protocol, " +
            "they are not comparable to a small model on a small dataset.")

    static let detection = ReportKind(
        name: "detection", title: "Detection transfer",
        units: "Detection numbers are COCO box and mask AP in percent on the val split",
        metrics: ["APbox", "APbox50", "APbox75", "APmask", "APmask50", "APmask75"].map { ReportMetric(key: $0, label: $0) } +
            [("APboxs", "APbox S"), ("APboxm", "APbox M"), ("APboxl", "APbox L")].map { ReportMetric(key: $0.0, label: $0.1) },
        primary: ["APbox", "APmask"], compared: ["APbox", "APbox50", "APbox75", "APmask", "APmask50", "APmask75"],
        showsSelected: false, hasCurves: false,
        paperNote: "MAE paper numbers are ViT-B Mask R-CNN on COCO (Table 4); they anchor the protocol, " +
            "they are not comparable to a small model on a small dataset.")

    static let segmentation = ReportKind(
        name: "segmentation", title: "Segmentation transfer",
        units: "Segmentation numbers are mIoU, mAcc and aAcc in percent on the val split",
        metrics: ["mIoU", "mAcc", "aAcc"].map { ReportMetric(key: $0, label: $0) },
        primary: ["mIoU"], compared: ["mIoU", "mAcc", "aAcc"], showsSelected: false, hasCurves: false,
        paperNote: "MAE paper numbers are ViT-B UperNet on ADE20K (Table 5); they anchor the protocol, " +
            "they are not comparable to a small model on a small dataset.")

    /// The kinds in the order the report shows them.
    static let all = [classification, detection, segmentation]

    func label(_ key: String) -> String { metrics.first { $0.key == key }?.label ?? key }
}

/// The MAE paper's numbers (He et al. 2022) for one metric of one protocol: ViT-B/16 on
/// ImageNet-1k unless said, ViT-B Mask R-CNN on COCO (Table 4), ViT-B UperNet on ADE20K (Table 5).
enum PaperAnchors {
    static func text(kind: ReportKind, protocol p: String, variant: String, metric: String) -> (mae: String, supervised: String) {
        switch (kind.name, metric) {
        case ("classification", "top1"):
            switch p {
            // Low-shot probes (", 1 shot", ", 1% labels") have no figure in the MAE paper.
            case "linprobe" where !variant.hasSuffix("shot") && !variant.hasSuffix("shots") && !variant.hasSuffix("labels"):
                return ("68.0 (ViT-B, Table 3)", "—")
            case "finetune" where variant == "full":
                return ("83.6 (ViT-B, Table 3)", "82.3 (from scratch, paper's recipe) / 76.5 (original ViT)")
            case "finetune" where variant == "last 1 blocks": return ("81.0 (ViT-L, Fig. 9; 73.5 linear)", "—")
            default: return ("—", "—")
            }
        case ("detection", "APbox"): return ("50.3 (ViT-B Mask R-CNN, Table 4)", "47.9 (ViT-B Mask R-CNN, Table 4)")
        case ("detection", "APmask"): return ("44.9 (ViT-B Mask R-CNN, Table 4)", "42.9 (ViT-B Mask R-CNN, Table 4)")
        // The MAE paper reports no linear segmentation probe.
        case ("segmentation", "mIoU") where variant.hasPrefix("linear"): return ("—", "—")
        case ("segmentation", "mIoU"): return ("48.1 (ViT-B UperNet, Table 5)", "47.4 (ViT-B UperNet, Table 5)")
        default: return ("—", "—")
        }
    }
}

/// A run found under the runs folder, whatever its task: what identifies it and its named metrics.
struct ReportRun {
    var kind: ReportKind
    var task: String
    var evaluation: String
    var variant: String
    var checkpoint: String
    var checkpointHash: String
    var method: String
    var role: String
    var seed: UInt64
    var recipe: String?
    /// Named numbers in percent, keyed as `kind.metrics`.
    var metrics: [String: Double]
    /// The "Data: ..." line's words ("shapes, 4000 train / 2000 val images, 10 classes (...)").
    var data: String?
    var selected: [String: Double]?
    var protocolChecks: [String]?
    var timings: [String: Double]
    var run: TransferRun
    /// Segmentation: each class's IoU in percent (nil where undefined), in the task's class order.
    var perClassIoU: [(name: String, iou: Double?)]? = nil
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

/// Every `metrics.json` of a transfer run (classification, detection or segmentation) under
/// `root`; a pretraining run's is skipped.
/// - Throws: `TaskError` when `root` is not a folder, or naming the file when a metrics.json cannot
///   be read, is not JSON, or lacks a field its kind of run needs (it is never silently left out).
func collectRuns(_ root: URL) throws -> [ReportRun] {
    var isFolder: ObjCBool = false
    guard FileManager.default.fileExists(atPath: root.path, isDirectory: &isFolder), isFolder.boolValue else {
        throw TaskError.badArgument("\(root.path) is not a folder of runs" +
                                    (FileManager.default.fileExists(atPath: root.path) ? "" : " (no such folder)"))
    }
    guard let walker = FileManager.default.enumerator(at: root, includingPropertiesForKeys: nil) else {
        throw TaskError.badArgument("\(root.path) cannot be listed")
    }
    var found: [ReportRun] = []
    for case let url as URL in walker where url.lastPathComponent == "metrics.json" {
        guard let run = try readReportRun(url) else { continue }
        found.append(run)
    }
    return found.sorted { $0.run.dir.path < $1.run.dir.path }
}

/// The fields a detection or segmentation run's `metrics.json` shares with a classification run's;
/// the optional ones are filled in as the report shows a missing one.
private struct DenseRunFields: Decodable {
    var task: String
    var evaluation: String?
    var variant: String?
    var checkpoint: String
    var checkpointHash: String?
    var method: String
    var role: String?
    var seed: UInt64
    var recipe: String?
    var dataset: String?
    var protocolChecks: [String]?
    var timings: [String: Double]?

    enum CodingKeys: String, CodingKey {
        case task, evaluation = "protocol", variant, checkpoint, checkpointHash = "checkpoint_hash", method, role, seed
        case recipe, dataset, protocolChecks = "protocol_checks", timings
    }
}

/// A detection run's 12 COCO numbers of each of `bbox` and `segm`; the report reads AP, AP50, AP75.
private struct DetectionFields: Decodable {
    var bbox: [String: Double]
    var segm: [String: Double]
}

/// A segmentation run's headline numbers.
private struct SegmentationFields: Decodable {
    var mIoU: Double
    var mAcc: Double
    var aAcc: Double
}

/// A transfer run's metrics, or nil for a pretraining run's `metrics.json`. Its kind comes from
/// its numbers: `bbox`/`segm` objects are detection, `mIoU` segmentation, else classification.
func readReportRun(_ url: URL) throws -> ReportRun? {
    func bad(_ problem: String) -> TaskError { TaskError.badArgument("\(url.path) \(problem), so the report cannot include its run") }
    guard let data = try? Data(contentsOf: url) else { throw bad("cannot be read") }
    guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
        throw bad("is not a JSON object (truncated or corrupt)")
    }
    let decoder = JSONDecoder()
    if object["protocol"] == nil, (try? decoder.decode(PretrainMetrics.self, from: data)) != nil { return nil }
    func decode<T: Decodable>(_ type: T.Type, what: String) throws -> T {
        do {
            return try decoder.decode(type, from: data)
        } catch DecodingError.keyNotFound(let key, let context) {
            throw bad("lacks the field '\((context.codingPath.map(\.stringValue) + [key.stringValue]).joined(separator: "."))'")
        } catch DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context) {
            throw bad("has a bad value for '\(context.codingPath.map(\.stringValue).joined(separator: "."))'")
        } catch {
            throw bad("is not \(what)")
        }
    }
    let dir = TransferRun(dir: url.deletingLastPathComponent())
    if object["bbox"] != nil || object["segm"] != nil || object["mIoU"] != nil {
        let detection = object["mIoU"] == nil
        let kind = detection ? ReportKind.detection : ReportKind.segmentation
        let fields = try decode(DenseRunFields.self, what: "a \(kind.name) run's metrics")
        var metrics: [String: Double] = [:]
        if detection {
            let coco = try decode(DetectionFields.self, what: "a detection run's metrics")
            for (name, numbers) in [("bbox", coco.bbox), ("segm", coco.segm)] {
                let metric = name == "bbox" ? "APbox" : "APmask"
                for (key, suffix) in [("AP", ""), ("AP50", "50"), ("AP75", "75")] {
                    guard let value = numbers[key] else { throw bad("lacks the field '\(name).\(key)'") }
                    metrics[metric + suffix] = value
                }
            }
            for (key, suffix) in [("APs", "s"), ("APm", "m"), ("APl", "l")] { metrics["APbox" + suffix] = coco.bbox[key] }
        } else {
            let seg = try decode(SegmentationFields.self, what: "a segmentation run's metrics")
            metrics = ["mIoU": seg.mIoU, "mAcc": seg.mAcc, "aAcc": seg.aAcc]
        }
        // `per_class` in the order the run wrote it (the task's class order).
        var perClass: [(name: String, iou: Double?)]?
        if !detection, case .object(let classes)? = (try? JSONValue.parse(data))?["per_class"] {
            perClass = classes.map { ($0.key, $0.value["IoU"]?.doubleValue) }
        }
        return ReportRun(kind: kind, task: fields.task, evaluation: fields.evaluation ?? kind.name, variant: fields.variant ?? "",
                         checkpoint: fields.checkpoint, checkpointHash: fields.checkpointHash ?? fields.checkpoint,
                         method: fields.method, role: fields.role ?? "checkpoint", seed: fields.seed, recipe: fields.recipe,
                         metrics: metrics, data: fields.dataset, selected: nil, protocolChecks: fields.protocolChecks,
                         timings: fields.timings ?? [:], run: dir, perClassIoU: perClass)
    }
    let m = try decode(TransferMetrics.self, what: "a transfer run's metrics")
    return ReportRun(kind: .classification, task: m.task, evaluation: m.evaluation, variant: m.variant, checkpoint: m.checkpoint,
                     checkpointHash: m.checkpointHash, method: m.method, role: m.role, seed: m.seed, recipe: m.recipe,
                     metrics: ["top1": m.top1, "top5": m.top5],
                     data: "\(m.dataset), \(m.trainImages) train / \(m.valImages) val images, \(m.classes) classes " +
                        "(`\(displayPath(m.trainData))`, `\(displayPath(m.valData))`)",
                     selected: m.selected, protocolChecks: m.protocolChecks, timings: m.timings, run: dir)
}

/// One backbone's row in a section: its runs over seeds.
struct BackboneRow {
    var key: String
    var runs: [ReportRun]
    var first: ReportRun { runs[0] }
    var name: String { URL(fileURLWithPath: first.checkpoint).deletingPathExtension().lastPathComponent }
    /// The metric over seeds.
    func values(_ metric: String) -> [Double] { runs.compactMap { $0.metrics[metric] } }
    func mean(_ metric: String) -> Double { meanStd(values(metric)).mean }
}

/// One section: the runs of one task, protocol and variant, a row per backbone.
struct ReportSection {
    var runs: [ReportRun]
    var rows: [BackboneRow]
    var first: ReportRun { runs[0] }
    var kind: ReportKind { first.kind }
    /// The row the deltas are against: the baseline, else a supervised backbone.
    var reference: BackboneRow? { rows.first { $0.first.role == "baseline" } ?? rows.first { $0.first.method == "supervised" } }
    var mae: BackboneRow? { rows.first { $0.first.method == "mae" && $0.first.role != "baseline" } ?? rows.first { $0.first.method == "mae" } }
    var supervised: BackboneRow? {
        rows.first { $0.first.method == "supervised" && $0.first.role == "baseline" } ?? rows.first { $0.first.method == "supervised" }
    }

    init(runs: [ReportRun]) {
        self.runs = runs
        rows = Dictionary(grouping: runs) { "\($0.checkpoint)|\($0.checkpointHash)" }
            .map { BackboneRow(key: $0.key, runs: $0.value.sorted { $0.seed < $1.seed }) }
            .sorted { ($0.first.role == "baseline" ? 1 : 0, $0.name) < ($1.first.role == "baseline" ? 1 : 0, $1.name) }
    }

    func anchors(_ metric: String) -> (mae: String, supervised: String) {
        PaperAnchors.text(kind: kind, protocol: first.evaluation, variant: first.variant, metric: metric)
    }
}

/// The summary's table of one kind: MAE, supervised and the delta of each primary metric, with
/// the paper's anchors.
private func summaryTable(_ kind: ReportKind, _ sections: [ReportSection]) -> String {
    let single = kind.primary.count == 1
    var header = "| task | protocol |", rule = "|---|---|"
    for p in kind.primary {
        let l = kind.label(p)
        header += " MAE \(l) | supervised \(l) | \(single ? "Δ (MAE − sup.)" : "Δ \(l)") |"
        rule += "---|---|---|"
    }
    var table = header + " MAE paper | supervised paper |\n" + rule + "---|---|\n"
    for s in sections {
        table += "| \(s.first.task) | \(s.first.variant.isEmpty ? s.first.evaluation : "\(s.first.evaluation) (\(s.first.variant))") |"
        for p in kind.primary {
            let delta = (s.mae != nil && s.supervised != nil) ? String(format: "%+.2f", s.mae!.mean(p) - s.supervised!.mean(p)) : "—"
            table += " \(s.mae.map { formatMeanStd($0.values(p)) } ?? "—") | \(s.supervised.map { formatMeanStd($0.values(p)) } ?? "—") | \(delta) |"
        }
        let anchors = kind.primary.map { (kind.label($0), s.anchors($0)) }
        let paper = { (side: ((mae: String, supervised: String)) -> String) in
            single ? side(anchors[0].1) : anchors.map { "\($0.0) \(side($0.1))" }.joined(separator: " / ")
        }
        table += " \(paper { $0.mae }) | \(paper { $0.supervised }) |\n"
    }
    return table
}

/// A section: data, a row per backbone with every metric and its delta against the reference,
/// the paper's anchors, the recipe, the protocol checks and (classification) the curves. `deltaCell`
/// (the transfer report's, with intervals) replaces a row's plain delta cell when it gives one.
func sectionBody(_ s: ReportSection, figuresFolder: String, figures: inout [(String, ReportFigure)],
                 deltaCell: (BackboneRow, String) -> String? = { _, _ in nil }) throws -> String {
    let kind = s.kind, m0 = s.first, rows = s.rows, reference = s.reference
    var body = "## \(m0.task): \(m0.variant.isEmpty ? m0.evaluation : "\(m0.evaluation), \(m0.variant)")\n\n"
    if let data = m0.data { body += "Data: \(data).\n\n" }
    if kind == .classification {
        let compared = kind.compared.map { "Δ \(kind.label($0)) vs \(reference?.name ?? "baseline")" }
        let columns = ["backbone", "method", "role"] + kind.metrics.map(\.label) + compared + ["seeds"] +
            (kind.showsSelected ? ["selected"] : []) + ["time (s)"]
        body += "| " + columns.joined(separator: " | ") + " |\n" + "|" + String(repeating: "---|", count: columns.count) + "\n"
        for row in rows {
            var cells = [row.name, row.first.method, row.first.role] + kind.metrics.map { formatMeanStd(row.values($0.key)) }
            cells += kind.compared.map { metric in
                reference.map { $0.key == row.key ? "—" : deltaCell(row, metric) ?? String(format: "%+.2f", row.mean(metric) - $0.mean(metric)) } ?? "—"
            }
            cells.append(row.runs.map { String($0.seed) }.joined(separator: ", "))
            if kind.showsSelected {
                cells.append(row.first.selected.map { s in
                    ["lr", "weight_decay"].compactMap { k in s[k].map { "\(k == "lr" ? "lr" : "wd") \(String(format: "%g", $0))" } }
                        .joined(separator: ", ")
                } ?? "—")
            }
            cells.append(String(format: "%.1f", meanStd(row.runs.compactMap { $0.timings["total_s"] }).mean))
            body += "| " + cells.joined(separator: " | ") + " |\n"
        }
    } else {
        body += denseTables(s, deltaCell: deltaCell)
    }
    if kind.primary.count == 1 {
        let anchors = s.anchors(kind.primary[0])
        body += "\nReference (MAE paper): MAE \(anchors.mae); supervised \(anchors.supervised).\n\n"
    } else {
        body += "\nReference (MAE paper): " + kind.primary.map { p in
            let anchors = s.anchors(p)
            return "\(kind.label(p)) MAE \(anchors.mae), supervised \(anchors.supervised)"
        }.joined(separator: "; ") + ".\n\n"
    }
    let recipes = Array(Set(s.runs.compactMap(\.recipe))).sorted()
    if !recipes.isEmpty { body += "Recipe: " + recipes.joined(separator: " | ") + ".\n\n" }

    // Protocol checks: shared ones plainly, backbone-specific ones with the backbone's name.
    if rows.contains(where: { $0.first.protocolChecks != nil }) {
        body += "Protocol checks:\n"
        var seen: [String] = []
        for row in rows {
            for check in row.first.protocolChecks ?? [] {
                let everywhere = rows.allSatisfy { ($0.first.protocolChecks ?? []).contains(check) }
                let line = everywhere ? check : "\(row.name): \(check)"
                if !seen.contains(line) { seen.append(line) }
            }
        }
        body += seen.map { "- \($0)\n" }.joined() + "\n"
    }
    if kind != .classification { body += runFigures(s, figuresFolder: figuresFolder, figures: &figures) }
    guard kind.hasCurves else { return body }

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
        figures.append(("\(slug)-loss.png", .plot(loss)))
        figures.append(("\(slug)-val.png", .plot(acc)))
        body += "![training loss](\(figuresFolder)/\(slug)-loss.png) ![val top-1](\(figuresFolder)/\(slug)-val.png)\n\n"
        body += "Curves: seed \(rows[0].runs[0].seed) of each backbone" +
            (m0.evaluation == "linprobe" && m0.variant.hasPrefix("cached") ? " (the selected head retrained on all of train)" : "") + ".\n\n"
    }
    return body
}

/// Renders the markdown report of every run under `runs`: a summary table per kind of task
/// (classification, detection, segmentation) and a section per task, protocol and variant.
/// Figures go to `figures` (a folder next to the report), linked relative to the report. Returns
/// the markdown and the figures to write.
func renderReport(runs root: URL, figuresFolder: String) throws -> (markdown: String, figures: [(String, ReportFigure)]) {
    let found = try collectRuns(root)
    let order = ["linprobe": 0, "knn": 1, "finetune": 2]
    let kindIndex = { (kind: ReportKind) in ReportKind.all.firstIndex(of: kind) ?? ReportKind.all.count }
    let sections = Dictionary(grouping: found) { "\($0.kind.name)\u{1}\($0.task)\u{1}\($0.evaluation)\u{1}\($0.variant)" }
        .values.map { ReportSection(runs: $0) }
        .sorted { a, b in
            let (x, y) = (a.first, b.first)
            return (kindIndex(x.kind), order[x.evaluation] ?? 9, x.task, x.variant) < (kindIndex(y.kind), order[y.evaluation] ?? 9, y.task, y.variant)
        }
    let kinds = ReportKind.all.filter { kind in sections.contains { $0.kind == kind } }
    let only = kinds.count == 1 ? kinds[0] : kinds.isEmpty ? ReportKind.classification : nil
    var md = "# \(only?.title ?? "Transfer"): MAE vs supervised backbones\n\n"
    md += "Generated by `mae-eval report` from the runs under `\(displayPath(root.path))/` (each run folder holds `metrics.json` and `log.jsonl`). " +
        (only.map { [$0] } ?? kinds).map(\.units).joined(separator: "; ") + "; with several seeds, mean ± sample std.\n\n"
    guard !found.isEmpty else {
        return (md + "No runs yet: run `mae-eval linprobe`, `mae-eval knn` or `mae-eval finetune`.\n", [])
    }
    md += "## Summary\n\n"
    for kind in kinds {
        if only == nil { md += "### \(kind.title)\n\n" }
        md += summaryTable(kind, sections.filter { $0.kind == kind }) + "\n" + kind.paperNote + "\n\n"
    }
    var figures: [(String, ReportFigure)] = []
    for section in sections { md += try sectionBody(section, figuresFolder: figuresFolder, figures: &figures) }
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
    for (name, figure) in figures { try figure.write(to: figureDir.appendingPathComponent(name)) }
    try writeAtomically(Data(markdown.utf8), to: out)
}

/// Runs a transfer command's `task` (`runLinearProbe`, `runKNN`, `runFineTune`) and then writes the
/// report of `options.outDir` to `options.report` (nothing with `--no-report`): the one place a
/// command's report is written, once, after all its runs. A task that throws writes no report.
/// Under MPI rank 0 writes it.
public func runAndReport(_ options: TransferOptions, _ task: () throws -> [TransferRun]) throws -> [TransferRun] {
    let runs = try task()
    if let report = options.report, Distributed.world.isMain { try writeReport(runs: options.outDir, to: report) }
    return runs
}

/// A figure a report writes next to itself: a plot it draws, or a run's PNG it copies.
enum ReportFigure {
    case plot(LinePlot)
    case copy(URL)

    func write(to url: URL) throws {
        switch self {
        case .plot(let plot): try plot.write(to: url)
        case .copy(let source): try writeAtomically(try Data(contentsOf: source), to: url)
        }
    }
}

/// A detection or segmentation section's tables, narrow enough to read: rows are the metrics,
/// columns each backbone (mean ± std over seeds) and each backbone's Δ against the reference
/// (`deltaCell` where it gives one, with its interval, else the plain difference); an AP of an area
/// range without objects (pycocotools' -1) is n/a. Segmentation adds per-class IoU the same way.
func denseTables(_ s: ReportSection, deltaCell: (BackboneRow, String) -> String?) -> String {
    let kind = s.kind, reference = s.reference
    let others = s.rows.filter { $0.key != reference?.key }
    let columns = s.rows.map { "\($0.name) (\($0.first.method)\($0.first.role == "baseline" ? ", baseline" : ""))" } +
        (reference.map { r in others.map { "Δ \($0.name) − \(r.name)" } } ?? [])
    func table(_ first: String, _ lines: [[String]]) -> String {
        "| " + ([first] + columns).joined(separator: " | ") + " |\n|" + String(repeating: "---|", count: columns.count + 1) + "\n" +
            lines.map { "| " + $0.joined(separator: " | ") + " |\n" }.joined()
    }
    func plainDelta(_ a: [Double], _ b: [Double]) -> String {
        guard !a.isEmpty, !b.isEmpty, a.allSatisfy({ $0 >= 0 }), b.allSatisfy({ $0 >= 0 }) else { return "—" }
        return String(format: "%+.2f", meanStd(a).mean - meanStd(b).mean)
    }
    let metricLines = kind.metrics.map { metric -> [String] in
        let values = s.rows.map { $0.values(metric.key) }
        var cells = [metric.label] + values.map { v in v.isEmpty ? "—" : v.allSatisfy { $0 < 0 } ? "n/a" : formatMeanStd(v) }
        if let r = reference {
            cells += others.map { row in
                (kind.compared.contains(metric.key) ? deltaCell(row, metric.key) : nil) ?? plainDelta(row.values(metric.key), r.values(metric.key))
            }
        }
        return cells
    }
    var text = table("metric", metricLines)
    text += "\nSeeds: " + s.rows.map { "\($0.name) \($0.runs.map { String($0.seed) }.joined(separator: ", "))" }.joined(separator: "; ") +
        ". Time (s): " + s.rows.map { "\($0.name) " + String(format: "%.1f", meanStd($0.runs.compactMap { $0.timings["total_s"] }).mean) }
            .joined(separator: "; ") + ".\n"
    // Per-class IoU: each backbone's mean over seeds, classes in the first run's order.
    guard let classes = s.runs.first(where: { $0.perClassIoU != nil })?.perClassIoU?.map(\.name) else { return text }
    func iou(_ row: BackboneRow, _ name: String) -> [Double] {
        row.runs.compactMap { run in run.perClassIoU?.first { $0.name == name }?.iou }
    }
    let classLines = classes.map { name -> [String] in
        var cells = [name] + s.rows.map { row in iou(row, name).isEmpty ? "—" : formatMeanStd(iou(row, name)) }
        if let r = reference { cells += others.map { plainDelta(iou($0, name), iou(r, name)) } }
        return cells
    }
    text += "\nPer-class IoU (percent; — where a class has no pixels in prediction or label):\n\n" + table("class", classLines)
    return text
}

/// The prediction figures of a dense section, copied next to the report: for each backbone's first
/// seed the first two of its run's `figures/` (detection: ground truth | detections) or
/// `overlays/` (segmentation: image | prediction | ground truth).
func runFigures(_ s: ReportSection, figuresFolder: String, figures: inout [(String, ReportFigure)]) -> String {
    let detection = s.kind == .detection
    let folder = detection ? "figures" : "overlays"
    var lines: [String] = []
    for row in s.rows {
        let run = row.runs[0]
        let dir = run.run.dir.appendingPathComponent(folder)
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".png") }
            .sorted { $0.compare($1, options: .numeric) == .orderedAscending }.prefix(2)
        guard !files.isEmpty else { continue }
        let slug = String("\(run.task)-\(run.variant)-\(row.name)-s\(run.seed)".lowercased()
            .map { $0.isLetter || $0.isNumber ? $0 : "-" }).split(separator: "-").joined(separator: "-")
        var images: [String] = []
        for file in files {
            let name = "\(slug)-\(file)"
            figures.append((name, .copy(dir.appendingPathComponent(file))))
            images.append("![\(row.name) \(file)](\(figuresFolder)/\(name))")
        }
        lines.append("\(row.name), seed \(run.seed): " + images.joined(separator: " "))
    }
    guard !lines.isEmpty else { return "" }
    let what = detection ? "Predictions (left: ground truth; right: detections)" : "Overlays (image | prediction | ground truth, ignored pixels black)"
    return "\(what):\n\n" + lines.map { "- \($0)\n" }.joined() + "\n"
}
