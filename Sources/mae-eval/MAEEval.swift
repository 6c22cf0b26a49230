import ArgumentParser
import Foundation
import MAEFormats

/// The `mae-eval` command line: each subcommand parses its flags and makes one library call.
@main
struct MAEEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mae-eval",
        abstract: "Transfer-learning evaluation of MAE-pretrained Vision Transformers.",
        subcommands: [
            Bench.self,
            Extract.self,
            Linprobe.self,
            KNN.self,
            Finetune.self,
            Report.self,
            CocoEvalCommand.self,
            SegEvalCommand.self,
            Info.self,
            DataCommand.self,
            Pretrain.self,
            Visualize.self,
        ])

    /// Like ArgumentParser's default, but a bad flag or value gets its one-sentence message on
    /// standard error (no usage dump) and exit status 1; help and version still print in full.
    static func main() {
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            let message = (describeSystemError(error) ?? self.message(for: error))
                .split(separator: "\n").first.map(String.init) ?? ""
            if !message.isEmpty {
                let text = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
                FileHandle.standardError.write(Data("error: \(text)\n".utf8))
            }
            Foundation.exit(code == .validationFailure ? 1 : code.rawValue)
        }
    }
}
