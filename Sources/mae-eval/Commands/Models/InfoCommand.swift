import ArgumentParser
import Foundation
import MAEFormats
import MAEModels

/// `mae-eval info CHECKPOINT`: what a checkpoint holds, without loading a model.
struct Info: LibraryCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe a checkpoint: format, layout, architecture, parameters, provenance, key report.",
        discussion: """
            Reads a safetensors file or a PyTorch checkpoint saved by torch.save (zip format; the pickle is \
            read by a restricted unpickler that never runs code). Recognises MAE pretrain (with or without \
            the decoder), MAE/timm fine-tuned, MAE linear-probe, timm ViT and DeiT layouts, inside a \
            `model`/`state_dict` wrapper or under a `module.` prefix. Prints the architecture inferred from \
            the tensor shapes, where the head count comes from, the parameter count, the method and \
            provenance recorded in mae-eval's metadata, training extras (epoch, args) of a training \
            checkpoint, and which weights match, are missing, unused or mis-shaped.
            """)

    @Argument(help: "A .safetensors file or a PyTorch .pth/.pt checkpoint.")
    var checkpoint: URL

    func call() throws -> [String] { [try CheckpointInfo(contentsOf: checkpoint).rendered] }
}
