import Foundation

// COCO instances JSON, as read and written here until the MAECOCO target (its full types and mask
// API) is available to this layer. Field names follow the COCO format.

/// An instance mask as COCO stores it.
public enum COCOMask: Codable, Sendable, Equatable {
    /// One or more polygons, each [x0, y0, x1, y1, ...] in pixel coordinates.
    case polygons([[Double]])
    /// Uncompressed RLE: run lengths over the column-major mask, starting with a run of zeros.
    case rle(counts: [Int], height: Int, width: Int)
    /// Compressed RLE (the LEB128-like string of pycocotools).
    case compressedRLE(counts: String, height: Int, width: Int)

    private enum Keys: String, CodingKey { case counts, size }

    public init(from decoder: Decoder) throws {
        if let polygons = try? [[Double]](from: decoder) {
            self = .polygons(polygons)
            return
        }
        let c = try decoder.container(keyedBy: Keys.self)
        let size = try c.decode([Int].self, forKey: .size)
        guard size.count == 2, size[0] >= 0, size[1] >= 0 else {
            throw DecodingError.dataCorruptedError(forKey: .size, in: c, debugDescription: "size must be [height, width]")
        }
        if let counts = try? c.decode([Int].self, forKey: .counts) {
            self = .rle(counts: counts, height: size[0], width: size[1])
        } else {
            self = .compressedRLE(counts: try c.decode(String.self, forKey: .counts), height: size[0], width: size[1])
        }
    }

    public func encode(to encoder: Encoder) throws {
        switch self {
        case .polygons(let p):
            var c = encoder.singleValueContainer()
            try c.encode(p)
        case .rle(let counts, let h, let w):
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(counts, forKey: .counts)
            try c.encode([h, w], forKey: .size)
        case .compressedRLE(let counts, let h, let w):
            var c = encoder.container(keyedBy: Keys.self)
            try c.encode(counts, forKey: .counts)
            try c.encode([h, w], forKey: .size)
        }
    }

    /// Uncompressed column-major RLE of a row-major (H, W) boolean mask.
    public static func rle(mask: [Bool], height: Int, width: Int) -> COCOMask {
        var counts: [Int] = [], current = false, run = 0
        for x in 0..<width {
            for y in 0..<height {
                if mask[y * width + x] == current {
                    run += 1
                } else {
                    counts.append(run)
                    current.toggle()
                    run = 1
                }
            }
        }
        counts.append(run)
        return .rle(counts: counts, height: height, width: width)
    }

    /// The row-major (H, W) mask of an RLE (compressed or not); nil for polygons, which need
    /// rasterising (MAECOCO's job), or for counts that do not cover the image exactly.
    public func decodedRLE() -> [Bool]? {
        let counts: [Int], h: Int, w: Int
        switch self {
        case .polygons: return nil
        case .rle(let c, let hh, let ww): (counts, h, w) = (c, hh, ww)
        case .compressedRLE(let s, let hh, let ww):
            guard let c = COCOMask.decompress(s) else { return nil }
            (counts, h, w) = (c, hh, ww)
        }
        var total = 0
        for run in counts {
            guard run >= 0 else { return nil }
            let (sum, overflow) = total.addingReportingOverflow(run)
            guard !overflow else { return nil }
            total = sum
        }
        guard h <= 1 << 20, w <= 1 << 20, total == h * w else { return nil }
        var mask = [Bool](repeating: false, count: h * w)
        var pos = 0, value = false
        for run in counts {
            if value { for p in pos..<(pos + run) { mask[(p % h) * w + p / h] = true } }
            pos += run
            value.toggle()
        }
        return mask
    }

    /// pycocotools' `rleFrString`: 5 bits per char (+48), continuation bit 0x20, sign bit 0x10,
    /// counts after the second stored as differences from the count two back.
    static func decompress(_ s: String) -> [Int]? {
        let bytes = Array(s.utf8)
        var counts: [Int] = [], p = 0
        while p < bytes.count {
            var x = 0, k = 0, more = true
            while more {
                guard p < bytes.count, bytes[p] >= 48, k < 12 else { return nil }   // 12 x 5 bits fit an Int
                let c = Int(bytes[p]) - 48
                x |= (c & 0x1f) << (5 * k)
                more = c & 0x20 != 0
                p += 1; k += 1
                if !more && c & 0x10 != 0 { x |= -1 << (5 * k) }
            }
            if counts.count > 2 { x &+= counts[counts.count - 2] }   // nonsense input may wrap; checked by the caller
            counts.append(x)
        }
        return counts
    }
}

/// COCO "images" entry.
public struct COCOImageEntry: Codable, Sendable, Equatable {
    public var id: Int
    public var file_name: String
    public var width: Int
    public var height: Int
    public init(id: Int, file_name: String, width: Int, height: Int) {
        self.id = id; self.file_name = file_name; self.width = width; self.height = height
    }
}

/// COCO "annotations" entry (instances).
public struct COCOAnnotationEntry: Codable, Sendable, Equatable {
    public var id: Int
    public var image_id: Int
    public var category_id: Int
    /// [x, y, width, height] in pixels.
    public var bbox: [Double]
    public var area: Double
    public var iscrowd: Int
    public var segmentation: COCOMask?
    public init(id: Int, image_id: Int, category_id: Int, bbox: [Double], area: Double, iscrowd: Int = 0,
                segmentation: COCOMask?) {
        self.id = id; self.image_id = image_id; self.category_id = category_id; self.bbox = bbox
        self.area = area; self.iscrowd = iscrowd; self.segmentation = segmentation
    }
}

/// COCO "categories" entry.
public struct COCOCategoryEntry: Codable, Sendable, Equatable {
    public var id: Int
    public var name: String
    public var supercategory: String?
    public init(id: Int, name: String, supercategory: String? = nil) {
        self.id = id; self.name = name; self.supercategory = supercategory
    }
}

/// A COCO instances file.
public struct COCOInstancesFile: Codable, Sendable, Equatable {
    public var images: [COCOImageEntry]
    public var annotations: [COCOAnnotationEntry]
    public var categories: [COCOCategoryEntry]
    public init(images: [COCOImageEntry], annotations: [COCOAnnotationEntry], categories: [COCOCategoryEntry]) {
        self.images = images; self.annotations = annotations; self.categories = categories
    }

    public static func read(contentsOf url: URL) throws -> COCOInstancesFile {
        let data = try readFile(url)
        do {
            return try JSONDecoder().decode(COCOInstancesFile.self, from: data)
        } catch let error as DecodingError {
            throw DataError(url, "is not a valid COCO instances file (\(describe(error)))")
        } catch {
            throw DataError(url, "is not valid JSON (\(error.localizedDescription))")
        }
    }

    public func write(to url: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        try writeAtomically(try encoder.encode(self), to: url)
    }
}

func describe(_ error: DecodingError) -> String {
    func path(_ keys: [CodingKey]) -> String {
        keys.map { $0.intValue.map { "[\($0)]" } ?? "." + $0.stringValue }.joined()
    }
    switch error {
    case .keyNotFound(let key, let ctx): return "missing \(path(ctx.codingPath + [key]))"
    case .typeMismatch(_, let ctx), .valueNotFound(_, let ctx): return "wrong type at \(path(ctx.codingPath))"
    case .dataCorrupted(let ctx):
        return ctx.codingPath.isEmpty ? "malformed JSON" : "bad value at \(path(ctx.codingPath)): \(ctx.debugDescription)"
    @unknown default: return "undecodable"
    }
}

/// One object of a COCO image.
public struct COCOInstance: Sendable, Equatable {
    /// Contiguous class index 0..<K, in the order of the file's categories sorted by id.
    public var label: Int
    public var categoryId: Int
    /// [x, y, width, height] in pixels.
    public var bbox: [Double]
    public var isCrowd: Bool
    public var mask: COCOMask?
}

/// A COCO instances dataset: images in a folder and their objects, per image.
public struct COCODetectionDataset: Sendable {
    public let imageFolder: URL
    public let images: [COCOImageEntry]
    /// Objects per image, parallel to `images`.
    public let instances: [[COCOInstance]]
    /// Category names in label order (categories sorted by id).
    public let classes: [String]
    public let categoryIds: [Int]

    public var count: Int { images.count }
    public func imageURL(_ i: Int) -> URL { imageFolder.appendingPathComponent(images[i].file_name) }

    /// Reads `annotations`, checking that every annotation's image is listed and every listed
    /// image exists in `imageFolder`, and that boxes are [x, y, w, h] with w, h >= 0.
    public init(annotations: URL, imageFolder: URL) throws {
        let file = try COCOInstancesFile.read(contentsOf: annotations)
        self.imageFolder = imageFolder
        let categories = file.categories.sorted { $0.id < $1.id }
        classes = categories.map(\.name)
        categoryIds = categories.map(\.id)
        let labelOf = Dictionary(categories.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { a, _ in a })
        let rowOf = Dictionary(file.images.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { a, _ in a })
        var instances = [[COCOInstance]](repeating: [], count: file.images.count)
        for a in file.annotations {
            guard let row = rowOf[a.image_id] else {
                throw DataError(annotations, "has annotation \(a.id) pointing at image id \(a.image_id), which is not in its images list")
            }
            guard let label = labelOf[a.category_id] else {
                throw DataError(annotations, "has annotation \(a.id) with category id \(a.category_id), which is not in its categories list")
            }
            guard a.bbox.count == 4, a.bbox[2] >= 0, a.bbox[3] >= 0 else {
                throw DataError(annotations, "has annotation \(a.id) whose bbox is not [x, y, width, height]")
            }
            instances[row].append(COCOInstance(label: label, categoryId: a.category_id, bbox: a.bbox,
                                               isCrowd: a.iscrowd != 0, mask: a.segmentation))
        }
        for image in file.images where !FileManager.default.fileExists(atPath: imageFolder.appendingPathComponent(image.file_name).path) {
            throw DataError(annotations, "lists image \(image.id) as \(image.file_name), which is missing from \(imageFolder.path)")
        }
        images = file.images
        self.instances = instances
    }
}

/// ADE20K / VOC-style semantic segmentation: images and same-named PNG label maps.
public struct SegmentationDataset: Sendable {
    /// The label that losses and metrics ignore.
    public static let ignoreIndex: Int32 = 255

    public let images: [URL]
    public let labels: [URL]
    /// ADE20K's convention: label 0 ("other") becomes ignored, the rest shift down by one.
    public let reduceZeroLabel: Bool

    public var count: Int { images.count }

    /// Pairs every image in `imageFolder` with `labelFolder/<same stem>.png`.
    public init(imageFolder: URL, labelFolder: URL, reduceZeroLabel: Bool) throws {
        let names = pythonSorted(try ImageFolder.list(imageFolder).filter(ImageFolder.isImage))
        guard !names.isEmpty else { throw DataError(imageFolder, "has no images") }
        images = names.map { imageFolder.appendingPathComponent($0) }
        labels = names.map { labelFolder.appendingPathComponent(($0 as NSString).deletingPathExtension + ".png") }
        for url in labels where !FileManager.default.fileExists(atPath: url.path) {
            throw DataError(url, "does not exist, but its image is in \(imageFolder.path)")
        }
        self.reduceZeroLabel = reduceZeroLabel
    }

    /// The image and its label map, which must be the image's size.
    public func sample(_ i: Int) throws -> (image: RGBImage, labels: LabelMap) {
        let image = try ImageCodec.decode(contentsOf: images[i])
        var map = try LabelMapCodec.read(contentsOf: labels[i])
        guard map.width == image.width, map.height == image.height else {
            throw DataError(labels[i], "is a \(map.width)x\(map.height) label map for a \(image.width)x\(image.height) image")
        }
        if reduceZeroLabel { SegmentationDataset.reduceZero(&map.labels) }
        return (image, map)
    }

    /// mmseg's reduce_zero_label: 0 -> 255, v -> v - 1, and 255 stays 255.
    public static func reduceZero(_ labels: inout [Int32]) {
        for i in labels.indices {
            let v = labels[i]
            labels[i] = v == 0 || v == 255 ? 255 : v - 1
        }
    }
}
