import ArgumentParser
import Foundation
import MAEKernels
import MAETasks

/// The `mae-eval` command line: each subcommand parses its flags and makes one library call.
@main
struct MAEEval: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mae-eval",
        abstract: "Transfer-learning evaluation of MAE-pretrained Vision Transformers.",
        discussion: """
            The shipped task specs (Tasks/), checkpoints (Checkpoints/), the generated Shapes data and the \
            feature cache (.mae-eval/) are found in the installation's home, so every command runs from any \
            folder: MAE_EVAL_HOME when set, else the first folder above the executable holding Tasks/ and \
            Checkpoints/ (the repository for .build/*/mae-eval), else the current folder. MAE_EVAL_CACHE moves \
            the feature cache. Outputs stay where you are: runs/ and Reports/classification.md are relative to \
            the current folder (from the repository root, the committed report).
            """,
        version: MAEEvalVersion.text,
        subcommands: [
            Bench.self,
            Extract.self,
            Linprobe.self,
            KNN.self,
            Finetune.self,
            Detect.self,
            All.self,
            Segment.self,
            Report.self,
            CocoEvalCommand.self,
            SegEvalCommand.self,
            Info.self,
            DataCommand.self,
            Pretrain.self,
            Visualize.self,
        ])

    /// Like ArgumentParser's default, but a bad flag or value gets its one-sentence message on
    /// standard error (no usage dump) and exit status 1; help and version still print in full. A
    /// command's own failures are already on standard error (`runCLI`) and arrive here as the exit code.
    static func main() {
        BLAS.ensureNativeKernel()
        let arguments = joiningNegativeNumbers(Array(CommandLine.arguments.dropFirst()))
        if let problem = unknownSubcommand(in: arguments) {
            FileHandle.standardError.write(Data("error: \(problem)\n".utf8))
            Foundation.exit(1)
        }
        do {
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            let message = self.message(for: error)
                .split(separator: "\n").first.map(String.init) ?? ""
            if !message.isEmpty {
                let text = message.hasPrefix("Error: ") ? String(message.dropFirst(7)) : message
                FileHandle.standardError.write(Data("error: \(oneSentence(text))\n".utf8))
            }
            Foundation.exit(code == .validationFailure ? 1 : code.rawValue)
        }
    }

    /// ArgumentParser's two sentences for a word an enum flag does not take ("The value 'x' is invalid for
    /// '--mode <mode>'. Please provide one of 'a' and 'b'.") as the project's one: "--mode must be a or b,
    /// not 'x'."; any other message as it is.
    static func oneSentence(_ message: String) -> String {
        let pattern = #/The value '(?<value>.*)' is invalid for '(?<flag>-[^ ']+)[^']*'\. Please provide one of (?<values>.+)\./#
        guard let m = message.wholeMatch(of: pattern) else { return message }
        let values = m.values.replacingOccurrences(of: "'", with: "").replacingOccurrences(of: " and ", with: " or ")
        return "\(m.flag) must be \(values), not '\(m.value)'."
    }

    /// `--epochs -1` as `--epochs=-1`: ArgumentParser takes a word starting with a dash for an option
    /// (and says "Missing value"), but reads the `=` form as the value, which is then checked.
    static func joiningNegativeNumbers(_ arguments: [String]) -> [String] {
        var out: [String] = []
        for word in arguments {
            if word.hasPrefix("-"), Double(word) != nil, let last = out.last, last.hasPrefix("--"), !last.contains("=") {
                out[out.count - 1] = last + "=" + word
            } else {
                out.append(word)
            }
        }
        return out
    }

    /// The sentence for a first word that names no subcommand (`mae-eval frobnicate`, `mae-eval data frob`),
    /// listing the valid ones; nil when the words name a command (or are options or help).
    static func unknownSubcommand(in arguments: [String]) -> String? {
        var command: ParsableCommand.Type = MAEEval.self
        var path = ["mae-eval"]
        for (i, word) in arguments.enumerated() {
            // `mae-eval help linprobe`: the same tree follows; `mae-eval data help` is ArgumentParser's.
            if word == "help" { if i == 0 { continue } else { return nil } }
            let subcommands = command.configuration.subcommands
            guard !subcommands.isEmpty, !word.hasPrefix("-") else { return nil }
            let names = subcommands.map { $0._commandName }
            guard let next = subcommands.first(where: { $0._commandName == word }) else {
                return "'\(word)' is not a \(path.joined(separator: " ")) command; the commands are " +
                    names.joined(separator: ", ") + "."
            }
            command = next
            path.append(word)
        }
        return nil
    }
}
