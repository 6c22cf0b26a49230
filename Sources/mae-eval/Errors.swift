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
