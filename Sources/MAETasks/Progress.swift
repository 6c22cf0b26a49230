import Foundation

/// A training progress line on standard error: epoch, step, loss, images/s and time left.
///
/// On a terminal it is redrawn in place (`\r`) a few times a second; when standard error is a file
/// or a pipe (logs, CI) it prints one line per epoch instead, so logs stay readable.
public final class ProgressLine {
    public let epochs: Int
    public let stepsPerEpoch: Int
    /// Whether stderr is a terminal (redraw in place) or not (one line per epoch).
    public let interactive: Bool
    private let enabled: Bool
    private var lastDraw = 0.0
    private var width = 0

    /// `enabled` false silences it entirely (tests).
    public init(epochs: Int, stepsPerEpoch: Int, enabled: Bool = true, interactive: Bool? = nil) {
        self.epochs = epochs
        self.stepsPerEpoch = stepsPerEpoch
        self.enabled = enabled
        self.interactive = interactive ?? (isatty(STDERR_FILENO) != 0)
    }

    /// After step `step` (from 1) of `epoch` (from 1): `loss` is the epoch's running mean,
    /// `imagesPerSecond` the epoch's rate so far, `secondsLeft` the estimate for the whole run.
    public func update(epoch: Int, step: Int, loss: Double, imagesPerSecond: Double, secondsLeft: Double) {
        guard enabled, interactive else { return }
        let now = Date().timeIntervalSinceReferenceDate
        guard now - lastDraw > 0.2 || step == stepsPerEpoch else { return }
        lastDraw = now
        let text = line(epoch: epoch, step: step, loss: loss, imagesPerSecond: imagesPerSecond, secondsLeft: secondsLeft)
        let padding = String(repeating: " ", count: max(0, width - text.count))
        width = text.count
        write("\r" + text + padding)
    }

    /// At an epoch's end: finishes the in-place line, or prints the epoch's line when not a terminal.
    public func endEpoch(epoch: Int, loss: Double, imagesPerSecond: Double, secondsLeft: Double) {
        guard enabled else { return }
        let text = line(epoch: epoch, step: stepsPerEpoch, loss: loss, imagesPerSecond: imagesPerSecond,
                        secondsLeft: secondsLeft)
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

    func line(epoch: Int, step: Int, loss: Double, imagesPerSecond: Double, secondsLeft: Double) -> String {
        let e = String(epoch).leftPadded(to: String(epochs).count)
        let s = String(step).leftPadded(to: String(stepsPerEpoch).count)
        return "epoch \(e)/\(epochs)  step \(s)/\(stepsPerEpoch)  loss \(String(format: "%.4f", loss))  " +
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

    private func write(_ s: String) { FileHandle.standardError.write(Data(s.utf8)) }
}

extension String {
    func leftPadded(to n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
