import ArgumentParser
import Foundation

/// Runs a library call; any error becomes its one-sentence description on standard error and exit 1.
func runCLI<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        let message = (error as? LocalizedError)?.errorDescription ?? String(describing: error)
        FileHandle.standardError.write(Data(("error: " + message + "\n").utf8))
        throw ExitCode(1)
    }
}

/// A command's output file that could not be written; the description is one sentence naming it.
struct OutputFileError: LocalizedError, CustomStringConvertible {
    var path: String
    var description: String { "\(path): cannot be written." }
    var errorDescription: String? { description }
}

/// Writes `text` and a newline to a command's `--out` file.
func writeOutputFile(_ text: String, to path: String) throws {
    let url = URL(fileURLWithPath: path)
    do {
        try Data((text + "\n").utf8).write(to: url)
    } catch {
        throw OutputFileError(path: url.path)
    }
}
