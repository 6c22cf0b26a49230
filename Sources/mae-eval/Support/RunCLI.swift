import ArgumentParser
import Foundation
import MAEFormats

/// A subcommand that parses into a value and makes one library call: `call()` is that call and returns
/// the lines to print on standard output; `run()` makes it through `runCLI`, the one error path.
protocol LibraryCommand: ParsableCommand {
    /// The one library call; the lines it returns are printed in order.
    func call() throws -> [String]
}

extension LibraryCommand {
    func run() throws {
        for line in try runCLI(call) { print(line) }
    }
}

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
