import Foundation

/// Where the shipped defaults are: the task specs (`Tasks/`), the checkpoints (`Checkpoints/`), the
/// generated Shapes data and the feature cache (under `.mae-eval/`), so every command works from any
/// folder, not only from the repository root.
///
/// The home is `MAE_EVAL_HOME` when set; else the first folder above the executable's real path that
/// holds both `Tasks/` and `Checkpoints/` (`.build/release/mae-eval` lies inside the repository);
/// else the current folder. `MAE_EVAL_CACHE` moves the feature cache (default `<home>/.mae-eval/cache`).
/// Run folders and reports are outputs: their defaults stay relative to the current folder.
public struct Installation: Sendable, Equatable {
    /// The folder holding `Tasks/` and `Checkpoints/`.
    public var home: URL
    /// How the home was found, for messages: "MAE_EVAL_HOME", "walking up from the executable" or "falling back to the current folder".
    public var foundBy: String
    /// The feature cache's root (`features/` lies inside it).
    public var cache: URL

    /// The installation of this process: its environment, its executable's real path (`/proc/self/exe`,
    /// or Foundation's where there is no /proc) and the current folder.
    public static let current = Installation(
        environment: ProcessInfo.processInfo.environment,
        executable: (FileManager.default.fileExists(atPath: "/proc/self/exe")
            ? URL(fileURLWithPath: "/proc/self/exe") : Bundle.main.executableURL)?.resolvingSymlinksInPath(),
        currentDirectory: URL(fileURLWithPath: FileManager.default.currentDirectoryPath))

    /// Resolves the home from `environment`, the executable's real path and the current folder.
    public init(environment: [String: String], executable: URL?, currentDirectory: URL) {
        if let path = environment["MAE_EVAL_HOME"], !path.isEmpty {
            home = Installation.resolve(path, from: currentDirectory)
            foundBy = "MAE_EVAL_HOME"
        } else if let found = executable.flatMap(Installation.shippedFolder(above:)) {
            home = found
            foundBy = "walking up from the executable"
        } else {
            home = currentDirectory.standardizedFileURL
            foundBy = "falling back to the current folder"
        }
        if let path = environment["MAE_EVAL_CACHE"], !path.isEmpty {
            cache = Installation.resolve(path, from: currentDirectory)
        } else {
            cache = home.appendingPathComponent(".mae-eval/cache")
        }
    }

    /// A path from the environment: absolute, or relative to the current folder.
    static func resolve(_ path: String, from folder: URL) -> URL {
        (path.hasPrefix("/") ? URL(fileURLWithPath: path) : folder.appendingPathComponent(path)).standardizedFileURL
    }

    /// The first folder above `file` that holds both `Tasks/` and `Checkpoints/`.
    static func shippedFolder(above file: URL) -> URL? {
        var folder = file.standardizedFileURL.deletingLastPathComponent()
        while folder.path != "/" && !folder.path.isEmpty {
            if isFolder(folder.appendingPathComponent("Tasks")) && isFolder(folder.appendingPathComponent("Checkpoints")) {
                return folder
            }
            folder = folder.deletingLastPathComponent()
        }
        return nil
    }

    private static func isFolder(_ url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    /// The shipped task specs.
    public var tasks: URL { home.appendingPathComponent("Tasks") }
    /// The shipped checkpoints.
    public var checkpoints: URL { home.appendingPathComponent("Checkpoints") }
    /// Where `pretrain` and `visualize` generate the Shapes dataset by default (the shipped task
    /// specs point at the same folder).
    public var shapesData: URL { home.appendingPathComponent(".mae-eval/data/shapes") }
    /// Cached eval-transform features of the probes and kNN.
    public var featureCache: URL { cache.appendingPathComponent("features") }

    /// What messages about missing shipped files say: "the installation home is <home>, found by ...".
    public var described: String { "the installation home is \(home.path), found by \(foundBy)" }
}

/// The shipped MAE checkpoint (`<home>/Checkpoints/mae_shapes.safetensors`).
public let defaultMAECheckpoint = Installation.current.checkpoints.appendingPathComponent("mae_shapes.safetensors")
/// The shipped supervised checkpoint.
public let defaultSupervisedCheckpoint = Installation.current.checkpoints.appendingPathComponent("supervised_shapes.safetensors")
/// Where `pretrain` and `visualize` generate the Shapes dataset unless `--data` or `--shapes-dir` says otherwise.
public let defaultShapesRoot = Installation.current.shapesData
