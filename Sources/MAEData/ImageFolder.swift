import Foundation
import MAEFormats
import MAEJSON

/// Python's `sorted` on strings: by Unicode code point, which is not Swift's `<` for every string.
func pythonSorted(_ names: [String]) -> [String] {
    names.sorted { $0.unicodeScalars.lexicographicallyPrecedes($1.unicodeScalars) }
}

/// A torchvision `ImageFolder`: one sub-folder per class, classes and files in torchvision's order.
public struct ImageFolder: Sendable {
    /// File extensions torchvision accepts (IMG_EXTENSIONS), compared case-insensitively. Only
    /// PNG and JPEG decode here; the others are listed so indices match torchvision's, and fail
    /// with a clear error if read.
    public static let extensions = [".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"]

    public let root: URL
    /// Class folder names, sorted by code point (`sorted(os.scandir)` in torchvision).
    public let classes: [String]
    /// (file, class index) in torchvision's order: by class, then by `os.walk` root, then by name.
    public let samples: [(url: URL, label: Int)]

    public var count: Int { samples.count }

    /// Lists `root`. Throws if it has no class folders, or a class folder holds no image.
    public init(root: URL) throws {
        self.root = root
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        guard fm.fileExists(atPath: root.path, isDirectory: &isDirectory), isDirectory.boolValue else {
            throw PathError(root, "is not a folder (an ImageFolder dataset needs one sub-folder per class)", period: false)
        }
        let entries = try ImageFolder.list(root)
        classes = pythonSorted(entries.filter { ImageFolder.isDirectory(root.appendingPathComponent($0)) })
        guard !classes.isEmpty else {
            throw PathError(root, "has no class sub-folders (an ImageFolder dataset needs one per class)", period: false)
        }
        var samples: [(URL, Int)] = []
        for (label, name) in classes.enumerated() {
            let folder = root.appendingPathComponent(name)
            let files = try ImageFolder.walk(folder)
            guard !files.isEmpty else {
                throw PathError(folder, "is an empty class folder (no .png/.jpg/.jpeg image in it)", period: false)
            }
            samples += files.map { ($0, label) }
        }
        self.samples = samples
    }

    static func isDirectory(_ url: URL) -> Bool {
        var isDirectory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) && isDirectory.boolValue
    }

    static func list(_ folder: URL) throws -> [String] {
        do {
            return try FileManager.default.contentsOfDirectory(atPath: folder.path)
        } catch {
            throw PathError(folder, "cannot be listed (\(describeCause(error)))", period: false)
        }
    }

    static func isImage(_ name: String) -> Bool {
        let lower = name.lowercased()
        return extensions.contains { lower.hasSuffix($0) }
    }

    /// The image files under `folder`, as torchvision's `sorted(os.walk(...))` then `sorted(fnames)`.
    static func walk(_ folder: URL) throws -> [URL] {
        var roots: [(path: String, files: [String])] = []
        var stack = [folder.path]
        while let dir = stack.popLast() {
            let names = try list(URL(fileURLWithPath: dir))
            var files: [String] = []
            for name in names {
                let path = dir + "/" + name
                if isDirectory(URL(fileURLWithPath: path)) { stack.append(path) } else if isImage(name) { files.append(name) }
            }
            roots.append((dir, pythonSorted(files)))
        }
        let order = pythonSorted(roots.map(\.path))
        let byPath = Dictionary(roots.map { ($0.path, $0.files) }, uniquingKeysWith: { a, _ in a })
        return order.flatMap { root in byPath[root]!.map { URL(fileURLWithPath: root + "/" + $0) } }
    }
}
