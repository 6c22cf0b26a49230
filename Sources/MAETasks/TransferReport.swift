import Foundation
import MAEFormats

/// One done unit, read back for the transfer report.
struct ReportedUnit {
    var unit: TransferUnit
    var record: UnitRecord
    var run: ReportRun
    var statistic: PerImageStatistic
    var dir: URL
}

/// A delta of one backbone against the section's reference, for one metric.
struct SectionDelta {
    var task: String, evaluation: String, variant: String, metric: String
    var backbone: String, reference: String
    var interval: DeltaInterval
    /// Sample std over seeds of the per-seed deltas (seeds both backbones ran); nil with fewer than two.
    var seedStd: Double?
    var seeds: Int

    /// "+3.20 [+1.10, +5.30]", "+3.20 ± 0.40 [...]" with several seeds, "n.s. (+0.40 [−1.20, +2.00])"
    /// when the interval covers 0: a cell never claims what its interval does not support.
    var cell: String {
        let spread = seedStd.map { String(format: " ± %.2f", $0) } ?? ""
        let text = String(format: "%+.2f", interval.delta) + spread +
            String(format: " [%+.2f, %+.2f]", interval.low, interval.high)
        return interval.significant ? text : "n.s. (\(text))"
    }
}

/// Reads every unit's record, metrics and per-image results.
/// - Throws: `TaskError` naming the unit when it is not done or its files cannot be read.
func reportedUnits(_ units: [TransferUnit], outDir: URL) throws -> [ReportedUnit] {
    try units.map { unit in
        guard let record = doneRecord(unit, outDir: outDir) else {
            throw TaskError.badArgument("unit \(unit.index) (\(unit.described)) is not done, so the report cannot include it")
        }
        let dir = outDir.appendingPathComponent(record.runDir)
        guard let run = try readReportRun(dir.appendingPathComponent("metrics.json")) else {
            throw TaskError.badArgument("\(dir.path)/metrics.json is not a transfer run's metrics")
        }
        let statistic = try perImageStatistic(try PerImageResults.read(from: dir), run: dir)
        return ReportedUnit(unit: unit, record: record, run: run, statistic: statistic, dir: dir)
    }
}

/// The section's rows' deltas against its reference for every compared metric, by paired bootstrap.
func sectionDeltas(_ section: ReportSection, units: [ReportedUnit], settings: BootstrapSettings) throws -> [SectionDelta] {
    guard let reference = section.reference else { return [] }
    func statistics(_ row: BackboneRow) -> [(seed: UInt64, statistic: PerImageStatistic)] {
        row.runs.compactMap { run in
            units.first { $0.dir.standardizedFileURL == run.run.dir.standardizedFileURL }.map { (run.seed, $0.statistic) }
        }
    }
    let b = statistics(reference)
    var deltas: [SectionDelta] = []
    for row in section.rows where row.key != reference.key {
        let a = statistics(row)
        let intervals: [String: DeltaInterval]
        do {
            intervals = try pairedBootstrap(a: a.map(\.statistic), b: b.map(\.statistic), metrics: section.kind.compared, settings: settings)
        } catch let TaskError.badArgument(why) {
            throw TaskError.badArgument("\(section.first.task) (\(section.first.variant)), \(row.name) vs \(reference.name): \(why)")
        }
        // Each seed's metrics on all images, computed once (a detection statistic is a COCO eval).
        let seedA = a.map { ($0.seed, $0.statistic.values(counts: ones($0.statistic))) }
        let seedB = Dictionary(b.map { ($0.seed, $0.statistic.values(counts: ones($0.statistic))) }, uniquingKeysWith: { x, _ in x })
        for metric in section.kind.compared {
            let paired = seedA.compactMap { seed, x in seedB[seed].map { y in (x[metric] ?? .nan) - (y[metric] ?? .nan) } }
            deltas.append(SectionDelta(task: section.first.task, evaluation: section.first.evaluation, variant: section.first.variant,
                                       metric: metric, backbone: row.name, reference: reference.name, interval: intervals[metric]!,
                                       seedStd: paired.count > 1 ? meanStd(paired).std : nil, seeds: paired.count))
        }
    }
    return deltas
}

private func ones(_ s: PerImageStatistic) -> [Int] { [Int](repeating: 1, count: s.images.count) }

/// The sections of the done units, in the order of the plan.
func transferSections(_ units: [ReportedUnit]) -> [ReportSection] {
    var order: [String] = []
    var groups: [String: [ReportRun]] = [:]
    for u in units {
        let key = "\(u.run.kind.name)\u{1}\(u.run.task)\u{1}\(u.run.evaluation)\u{1}\(u.run.variant)"
        if groups[key] == nil { order.append(key) }
        groups[key, default: []].append(u.run)
    }
    return order.map { ReportSection(runs: groups[$0]!) }
}

/// The markdown of the transfer report and its figures.
func renderTransferReport(_ units: [ReportedUnit], sections: [ReportSection], deltas: [[SectionDelta]],
                          settings: BootstrapSettings, figuresFolder: String) throws -> (String, [(String, ReportFigure)]) {
    let backbones = sections.flatMap(\.rows).reduce(into: [BackboneRow]()) { list, row in
        if !list.contains(where: { $0.key == row.key }) { list.append(row) }
    }.sorted { ($0.first.role == "baseline" ? 1 : 0, $0.name) < ($1.first.role == "baseline" ? 1 : 0, $1.name) }
    let compared = backbones.filter { b in deltas.joined().contains { $0.backbone == b.name } }.map(\.name)
    let reference = deltas.joined().first?.reference
    let level = Int((settings.confidence * 100).rounded())
    var md = "# Transfer: MAE vs supervised backbones\n\n"
    md += "Generated by `mae-eval all`: \(units.count) units (backbone x task x seed), each its own run folder under " +
        "`units/` of the out dir, every `metrics.json` collected in `transfer.json` beside this file. " +
        "Numbers are percent on each task's val split; with several seeds, mean ± sample std over seeds.\n\n"
    md += "Every Δ carries a \(level)% confidence interval from a paired bootstrap over the validation images: " +
        "\(settings.resamples) resamples (seed \(settings.seed))" +
        (sections.contains { $0.kind == .detection } ? " (detection: \(settings.detectionResamples), as each is a COCO eval per run; " +
            "a drawn copy of an image is evaluated as a new image id with that image's ground truth and detections)" : "") +
        " of the val images with replacement, the same images for both " +
        "backbones and every seed; each resample's Δ is the mean over seeds of one backbone minus the other's, recomputed from " +
        "per-image results (classification: per-image top-1 correctness; segmentation: per-image intersections and unions; " +
        "detection: COCO eval re-run on the resampled images); the interval is its \(plainNumber((100 - Double(level)) / 2))th and " +
        "\(plainNumber(100 - (100 - Double(level)) / 2))th percentiles. A Δ whose interval covers 0 is marked n.s. " +
        "(not significant) and claims no difference; with several seeds the Δ also shows ± the std of the per-seed Δs.\n\n"
    md += "## Summary\n\n"
    var header = "| task | protocol | metric |" + backbones.map { " \($0.name) (\($0.first.method)) |" }.joined()
    header += compared.map { " Δ \($0) − \(reference ?? "ref") (\(level)% CI) |" }.joined() + " MAE paper |\n"
    md += header + "|---|---|---|" + String(repeating: "---|", count: backbones.count + compared.count + 1) + "\n"
    for (section, sectionDeltas) in zip(sections, deltas) {
        let first = section.first
        for metric in section.kind.primary {
            var cells = [first.task, first.variant.isEmpty ? first.evaluation : "\(first.evaluation) (\(first.variant))",
                         section.kind.label(metric)]
            cells += backbones.map { b in section.rows.first { $0.key == b.key }.map { formatMeanStd($0.values(metric)) } ?? "—" }
            cells += compared.map { name in sectionDeltas.first { $0.backbone == name && $0.metric == metric }?.cell ?? "—" }
            cells.append(section.anchors(metric).mae)
            md += "| " + cells.joined(separator: " | ") + " |\n"
        }
    }
    md += "\n" + ReportKind.all.filter { k in sections.contains { $0.kind == k } }.map(\.paperNote).joined(separator: " ") + "\n\n"
    var figures: [(String, ReportFigure)] = []
    for (section, sectionDeltas) in zip(sections, deltas) {
        md += try sectionBody(section, figuresFolder: figuresFolder, figures: &figures) { row, metric in
            sectionDeltas.first { $0.backbone == row.name && $0.metric == metric }?.cell
        }
    }
    return (md, figures)
}

/// `transfer.json`: the bootstrap, one row per unit (its record and its whole `metrics.json`), and
/// every delta with its interval.
func transferJSON(_ units: [ReportedUnit], deltas: [SectionDelta], settings: BootstrapSettings) throws -> Data {
    let rows: [[String: Any]] = try units.map { u in
        let metrics = try JSONSerialization.jsonObject(with: Data(contentsOf: u.dir.appendingPathComponent("metrics.json")))
        return ["unit": u.unit.index, "task": u.unit.task.name, "task_hash": u.unit.task.hash, "protocol": u.unit.task.protocolName,
                "variant": u.run.variant, "checkpoint": displayPath(u.unit.backbone.url.path), "checkpoint_hash": u.unit.backboneHash,
                "role": u.unit.backbone.role, "method": u.run.method, "seed": u.unit.seed, "run_dir": u.record.runDir,
                "seconds": u.record.seconds, "metrics": metrics]
    }
    let intervals: [[String: Any]] = deltas.map { d in
        var row: [String: Any] = ["task": d.task, "protocol": d.evaluation, "variant": d.variant, "metric": d.metric,
                                  "backbone": d.backbone, "reference": d.reference, "delta": d.interval.delta,
                                  "ci_low": d.interval.low, "ci_high": d.interval.high, "significant": d.interval.significant,
                                  "paired_seeds": d.seeds]
        if let s = d.seedStd { row["seed_std"] = s }
        return row
    }
    let object: [String: Any] = [
        "format": "mae-eval transfer 1",
        "bootstrap": ["resamples": settings.resamples, "seed": settings.seed, "confidence": settings.confidence,
                      "kind": "paired, over validation images"],
        "units": rows, "deltas": intervals,
    ]
    return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
}

/// Writes `options.report` (markdown, figures beside it) and `transfer.json` for every unit, all done.
public func writeTransferReport(units: [TransferUnit], options o: AllOptions) throws {
    let reported = try reportedUnits(units, outDir: o.outDir)
    let sections = transferSections(reported)
    let deltas = try sections.map { try sectionDeltas($0, units: reported, settings: o.bootstrap) }
    let folder = reportFiguresFolder(o.report)
    let (markdown, figures) = try renderTransferReport(reported, sections: sections, deltas: deltas, settings: o.bootstrap,
                                                       figuresFolder: folder.lastPathComponent)
    try prepareReportOutput(o.report, flag: "the report")
    if !figures.isEmpty { try prepareOutputFolder(folder, flag: "the report's figures folder") }
    for (name, figure) in figures { try figure.write(to: folder.appendingPathComponent(name)) }
    try writeAtomically(try transferJSON(reported, deltas: deltas.flatMap { $0 }, settings: o.bootstrap), to: o.reportJSON)
    try writeAtomically(Data(markdown.utf8), to: o.report)
}
