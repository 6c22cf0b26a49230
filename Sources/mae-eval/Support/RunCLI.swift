import ArgumentParser
import Foundation
import MAEDistributed
import MAEFormats

/// A subcommand that parses into a value and makes one library call: `call()` is that call and returns
/// the lines to print on standard output; `run()` makes it through `runCLI`, the one error path.
protocol LibraryCommand: ParsableCommand {
    /// The one library call; the lines it returns are printed in order.
    func call() throws -> [String]
}

extension LibraryCommand {
    func run() throws {
        let lines = try runCLI(call)
        // Under MPI every rank ran the call; rank 0 alone speaks.
        if Distributed.world.isMain { for line in lines { print(line) } }
    }
}

/// Runs a library call; any error becomes its one-sentence description on standard error and exit 1.
/// The job's MPI world starts first (only under a launcher); an error on one of several ranks
/// ends the whole job (MPI_Abort), since the others would wait for it in their next collective.
func runCLI<T>(_ body: () throws -> T) throws -> T {
    do {
        try Distributed.start()
        return try body()
    } catch let error as ExitCode {
        throw error
    } catch {
        let world = Distributed.world
        let rank = world.size > 1 ? "rank \(world.rank) of \(world.size): " : ""
        FileHandle.standardError.write(Data(("error: " + rank + describe(error) + "\n").utf8))
        world.abort(code: 1)
        throw ExitCode(1)
    }
}
