import Foundation
import MAEDistributed

/// A progress line on standard error: a training run's epoch, step, loss, images/s and time left,
/// or a count of work done (images extracted, epochs of a probe grid) with its rate and time left.
///
/// On a terminal it is redrawn in place (`\r`) a few times a second; when standard error is a file
/// or a pipe (logs, CI) it prints one line per epoch (per finished count) instead, so logs stay readable.
public final class ProgressLine {
    public let epochs: Int
    public let stepsPerEpoch: Int
    /// Whether stderr is a terminal (redraw in place) or not (one line per epoch).
    public let interactive: Bool
    private let enabled: Bool
    private var lastDraw = 0.0
    private var width = 0
    private let start = Date()
    private let sink: (String) -> Void

    /// `enabled` false silences it entirely (tests), and so does any rank but 0 under MPI. A count
    /// of work needs no epochs or steps.
    /// `sink` receives the text instead of standard error (tests).
    public init(epochs: Int = 1, stepsPerEpoch: Int = 1, enabled: Bool = true, interactive: Bool? = nil,
                sink: ((String) -> Void)? = nil) {
        self.epochs = epochs
        self.stepsPerEpoch = stepsPerEpoch
        self.enabled = enabled && Distributed.world.isMain
        self.interactive = interactive ?? (isatty(STDERR_FILENO) != 0)
        self.sink = sink ?? { FileHandle.standardError.write(Data($0.utf8)) }
    }

    /// After step `step` (from 1) of `epoch` (from 1): `loss` is the epoch's running mean,
    /// `imagesPerSecond` the epoch's rate so far, `secondsLeft` the estimate for the whole run;
    /// `terms` are further loss terms by name (running means), shown after the loss.
    public func update(epoch: Int, step: Int, loss: Double, terms: [String: Double] = [:], imagesPerSecond: Double,
                       secondsLeft: Double) {
        draw(force: step == stepsPerEpoch) {
            line(epoch: epoch, step: step, loss: loss, terms: terms, imagesPerSecond: imagesPerSecond, secondsLeft: secondsLeft)
        }
    }

    /// At an epoch's end: finishes the in-place line, or prints the epoch's line when not a terminal.
    public func endEpoch(epoch: Int, loss: Double, terms: [String: Double] = [:], imagesPerSecond: Double,
                         secondsLeft: Double) {
        finish(line(epoch: epoch, step: stepsPerEpoch, loss: loss, terms: terms, imagesPerSecond: imagesPerSecond,
                    secondsLeft: secondsLeft))
    }

    /// `done` of `total` `unit` ("images") since this line was made, as "`label` done/total unit
    /// rate unit/s  left T" (`detail`, e.g. a loss, after the count). Redrawn in place on a terminal;
    /// the line is finished when `done` reaches `total` (then also printed when not a terminal).
    public func update(_ label: String, done: Int, total: Int, unit: String, detail: String = "") {
        if done >= total {
            finish(countLine(label, done: done, total: total, unit: unit, detail: detail))
        } else {
            draw(force: false) { countLine(label, done: done, total: total, unit: unit, detail: detail) }
        }
    }

    func countLine(_ label: String, done: Int, total: Int, unit: String, detail: String) -> String {
        let seconds = Date().timeIntervalSince(start)
        let rate = seconds > 0 ? Double(done) / seconds : 0
        let left = rate > 0 ? Double(total - done) / rate : .nan
        let count = String(done).leftPadded(to: String(total).count)
        return "\(label) \(count)/\(total) \(unit)" + (detail.isEmpty ? "" : "  \(detail)") +
            "  \(String(format: rate >= 10 ? "%.0f" : "%.1f", rate)) \(unit)/s  " +
            (done >= total ? "took \(ProgressLine.duration(seconds))" : "left \(ProgressLine.duration(left))")
    }

    /// Redraws the in-place line (terminal only), at most five times a second unless `force`.
    private func draw(force: Bool, _ text: () -> String) {
        guard enabled, interactive else { return }
        let now = Date().timeIntervalSinceReferenceDate
        guard now - lastDraw > 0.2 || force else { return }
        lastDraw = now
        let text = text()
        let padding = String(repeating: " ", count: max(0, width - text.count))
        width = text.count
        write("\r" + text + padding)
    }

    /// Ends the in-place line with `text`, or prints `text` on its own line when not a terminal.
    private func finish(_ text: String) {
        guard enabled else { return }
        if interactive {
            let padding = String(repeating: " ", count: max(0, width - text.count))
            write("\r" + text + padding + "\n")
            width = 0
        } else {
            write(text + "\n")
        }
    }

    /// A free-form message on its own line (keeps an in-place line intact).
    public func note(_ message: String) {
        guard enabled else { return }
        if interactive && width > 0 { write("\n"); width = 0 }
        write(message + "\n")
    }

    func line(epoch: Int, step: Int, loss: Double, terms: [String: Double] = [:], imagesPerSecond: Double,
              secondsLeft: Double) -> String {
        let e = String(epoch).leftPadded(to: String(epochs).count)
        let s = String(step).leftPadded(to: String(stepsPerEpoch).count)
        let named = terms.sorted { $0.key < $1.key }.map { " \($0.key) \(String(format: "%.4f", $0.value))" }.joined()
        return "epoch \(e)/\(epochs)  step \(s)/\(stepsPerEpoch)  loss \(String(format: "%.4f", loss))\(named)  " +
            "\(String(format: "%.0f", imagesPerSecond)) img/s  left \(ProgressLine.duration(secondsLeft))"
    }

    /// 75 -> "1m15s", 3700 -> "1h01m".
    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite, seconds >= 0 else { return "?" }
        let s = Int(seconds.rounded())
        if s >= 3600 { return String(format: "%dh%02dm", s / 3600, (s % 3600) / 60) }
        if s >= 60 { return String(format: "%dm%02ds", s / 60, s % 60) }
        return "\(s)s"
    }

    private func write(_ s: String) { sink(s) }
}

extension String {
    func leftPadded(to n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
