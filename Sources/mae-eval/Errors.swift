import ArgumentParser
import Foundation
import MAEFormats

/// Runs a library call; any error becomes its one-sentence description on standard error and exit 1.
func runCLI<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        FileHandle.standardError.write(Data(("error: " + describe(error) + "\n").utf8))
        throw ExitCode(1)
    }
}

/// Writes `text` and a newline to a command's `--out` file, by `writeAtomically`'s rule (a FIFO or
/// `/dev/stdout` is written through, a regular file replaced whole).
func writeOutputFile(_ text: String, to path: String) throws {
    try writeAtomically(Data((text + "\n").utf8), to: URL(fileURLWithPath: path))
}
