import ArgumentParser
import Foundation
import MAEData

/// `mae-eval data shapes`: writes the procedural Shapes dataset.
struct ShapesCommand: LibraryCommand {
    static let configuration = CommandConfiguration(
        commandName: "shapes",
        abstract: "Generate the Shapes dataset (ImageFolder PNGs, COCO instances JSON, PNG class maps).",
        discussion: """
            Writes under --out: pretrain/unlabeled/*.png, supervised/<class>/*.png, train/<class>/*.png, \
            val/<class>/*.png, scenes_train and scenes_val (images/*.png, instances.json in COCO format, \
            class_maps/*.png with 0 = background and 1...K = classes), and shapes.json (the manifest). \
            The output depends only on the flags; when shapes.json already matches them nothing is redone \
            unless --force is given.
            """)

    @Option(name: .long, help: "Output folder.")
    var out: URL

    @Option(name: .long, help: "Side of the classification images in pixels, 8...1024.")
    var size: Int = 32

    @Option(name: .long, help: "Side of the scene images in pixels, 16...2048 (default: twice --size).")
    var sceneSize: Int?

    @Option(name: .long, help: "Random seed.")
    var seed: UInt64 = 0

    @Option(name: .long, parsing: .singleValue,
            help: "Images in a split, as SPLIT=N (repeatable); splits: pretrain, supervised, train, val, scenes_train, scenes_val.")
    var count: [String] = []

    @Flag(name: .long, help: "Regenerate even when an identical shapes.json exists.")
    var force = false

    var options: ShapesOptions {
        get throws {
            var o = ShapesOptions(root: out)
            o.size = size
            o.sceneSize = sceneSize
            o.seed = seed
            o.counts = try ShapesCounts.standard.setting(count)
            o.force = force
            return o
        }
    }

    func call() throws -> [String] {
        let start = Date()
        let paths = try ShapesDataset.make(options)
        return [String(format: "%@ (%.1f s)", paths.root.path, Date().timeIntervalSince(start))]
    }
}
