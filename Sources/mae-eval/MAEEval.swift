import ArgumentParser

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
}
