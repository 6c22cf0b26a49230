import ArgumentParser
import Foundation
import MAEData

/// `mae-eval data ...`: dataset utilities.
struct DataCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "data",
        abstract: "Generate and inspect datasets.",
        subcommands: [ShapesCommand.self, LoaderBenchCommand.self])
}

/// `mae-eval data shapes`: writes the procedural Shapes dataset.
struct ShapesCommand: ParsableCommand {
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
    var out: String

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

    func run() throws {
        var counts = ShapesCounts.standard
        for item in count {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let n = Int(parts[1]), n >= 0 else {
                throw ValidationError("--count \(item): expected SPLIT=N with N >= 0")
            }
            switch parts[0] {
            case "pretrain": counts.pretrain = n
            case "supervised": counts.supervised = n
            case "train": counts.train = n
            case "val": counts.val = n
            case "scenes_train": counts.scenesTrain = n
            case "scenes_val": counts.scenesVal = n
            default: throw ValidationError("--count \(item): unknown split \(parts[0])")
            }
        }
        let root = URL(fileURLWithPath: out)
        let start = Date()
        let paths = force
            ? try ShapesDataset.generate(to: root, size: size, seed: seed, counts: counts, sceneSize: sceneSize)
            : try ShapesDataset.ensure(at: root, size: size, seed: seed, counts: counts, sceneSize: sceneSize)
        print(String(format: "%@ (%.1f s)", paths.root.path, Date().timeIntervalSince(start)))
    }
}

/// `mae-eval data loader-bench`: how fast the loader decodes and augments a folder.
struct LoaderBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "loader-bench",
        abstract: "Measure loader throughput (decode + augment + normalise) in images/s; prints one JSON line.")

    @Option(name: .long, help: "An ImageFolder dataset.")
    var data: String

    @Option(name: .long, help: "Output side in pixels.")
    var size: Int = 224

    @Option(name: .long, help: "train (RandomResizedCrop + flip) or eval (resize + center crop).")
    var mode: String = "train"

    @Option(name: .long, help: "Background threads.")
    var workers: Int = 2

    @Option(name: .long, help: "Images per batch.")
    var batchSize: Int = 32

    func run() throws {
        let folder = try ImageFolder(root: URL(fileURLWithPath: data))
        let transform: MAETransform = mode == "eval"
            ? .eval(size: size, cropRatio: 0.875) : .train(RandomResizedCrop(size: size, scale: 0.2...1))
        let loader = DataLoader(source: folder, transform: transform, batchSize: batchSize, workers: workers)
        let start = Date()
        var images = 0
        let it = loader.epoch(0)
        while let batch = try it.next() { images += batch.count }
        let seconds = Date().timeIntervalSince(start)
        print(String(format: "{\"img_per_s\": %.1f, \"images\": %d, \"size\": %d, \"mode\": \"%@\", \"workers\": %d}",
                     Double(images) / seconds, images, size, mode, workers))
    }
}
