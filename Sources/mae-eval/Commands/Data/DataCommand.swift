import ArgumentParser

/// `mae-eval data ...`: dataset utilities.
struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Generate and inspect datasets.",
        subcommands: [ShapesCommand.self, LoaderBenchCommand.self])
}
