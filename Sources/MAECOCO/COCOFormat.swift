// COCO instances JSON (ground truth) and the COCO results format (detections). Reading accepts the
// variants real files have: ints written as floats, iscrowd as a bool, missing optional fields
// (info, licenses, area, bbox), RLE counts as a string or a list.
import Foundation
import MAEFormats
import MAEJSON

/// An image entry of an instances file.
public struct COCOImage: Equatable, Sendable {
    public var id: Int
    public var width: Int
    public var height: Int
    public var fileName: String

    public init(id: Int, width: Int, height: Int, fileName: String) {
        self.id = id
        self.width = width
        self.height = height
        self.fileName = fileName
    }
}

/// A category entry of an instances file.
public struct COCOCategory: Equatable, Sendable {
    public var id: Int
    public var name: String
    public var supercategory: String

    public init(id: Int, name: String, supercategory: String = "") {
        self.id = id
        self.name = name
        self.supercategory = supercategory
    }
}

/// An object's segmentation as it is written in the file.
public enum COCOSegmentation: Equatable, Sendable {
    /// One or more polygons [x0, y0, x1, y1, ...] in pixel coordinates (the object is their union).
    case polygons([[Double]])
    /// RLE written with a compressed counts string (`{"size": [h, w], "counts": "..."}`).
    case rle(RLE)
    /// RLE written with a plain counts list (`{"size": [h, w], "counts": [..]}`), used for crowds.
    case uncompressedRLE(RLE)

    /// The object's mask as one RLE (pycocotools' `annToRLE`); polygons are rasterised at the image size.
    public func rle(imageHeight: Int, imageWidth: Int) -> RLE {
        switch self {
        case .polygons(let polygons): return RLE(polygons: polygons, height: imageHeight, width: imageWidth)
        case .rle(let r), .uncompressedRLE(let r): return r
        }
    }
}

/// One ground-truth annotation of an instances file.
public struct COCOAnnotation: Equatable, Sendable {
    public var id: Int
    public var imageId: Int
    public var categoryId: Int
    /// [x, y, w, h] in pixels.
    public var bbox: [Double]
    /// The area used for COCO's small/medium/large ranges (the file's `area`; for masks, the mask area).
    public var area: Double
    public var isCrowd: Bool
    public var segmentation: COCOSegmentation?

    public init(id: Int, imageId: Int, categoryId: Int, bbox: [Double], area: Double, isCrowd: Bool = false,
                segmentation: COCOSegmentation? = nil) {
        self.id = id
        self.imageId = imageId
        self.categoryId = categoryId
        self.bbox = bbox
        self.area = area
        self.isCrowd = isCrowd
        self.segmentation = segmentation
    }
}

/// A COCO instances file: images, annotations and categories.
public struct COCODataset: Equatable, Sendable {
    public var images: [COCOImage]
    public var annotations: [COCOAnnotation]
    public var categories: [COCOCategory]

    public init(images: [COCOImage], annotations: [COCOAnnotation], categories: [COCOCategory]) {
        self.images = images
        self.annotations = annotations
        self.categories = categories
    }

    /// Reads an instances JSON file; throws `PathError` naming the file if it is missing or malformed,
    /// or if two images share an id.
    /// - Parameter requiredAnnotationFields: keys every annotation must have (COCOeval reads `area`,
    ///   `iscrowd` and, for boxes, `bbox` without a default); others are filled in from the mask.
    public init(contentsOf url: URL, requiredAnnotationFields: [String] = []) throws {
        let root = try readJSON(url)
        let file = url.path
        guard case .object(let top) = root else {
            throw PathError(file, "expected a JSON object with images, annotations and categories")
        }
        var reader = FieldReader(file: file)
        images = try reader.array(top["images"], "images").enumerated().map { i, item in
            reader.context = "images[\(i)]"
            let o = try reader.object(item)
            return COCOImage(id: try reader.int(o["id"], "id"), width: try reader.int(o["width"], "width"),
                             height: try reader.int(o["height"], "height"),
                             fileName: o["file_name"]?.stringValue ?? "")
        }
        var firstIndex: [Int: Int] = [:]
        for (i, image) in images.enumerated() {
            if let j = firstIndex[image.id] {
                throw PathError(file, "images[\(i)] repeats the image id \(image.id) of images[\(j)] (image ids must be unique)")
            }
            firstIndex[image.id] = i
        }
        categories = try reader.array(top["categories"], "categories").enumerated().map { i, item in
            reader.context = "categories[\(i)]"
            let o = try reader.object(item)
            return COCOCategory(id: try reader.int(o["id"], "id"), name: o["name"]?.stringValue ?? "",
                                supercategory: o["supercategory"]?.stringValue ?? "")
        }
        let sizes = Dictionary(images.map { ($0.id, ($0.height, $0.width)) }, uniquingKeysWith: { a, _ in a })
        annotations = try reader.array(top["annotations"] ?? .array([]), "annotations").enumerated().map { i, item in
            reader.context = "annotations[\(i)]"
            let o = try reader.object(item)
            let id = try reader.int(o["id"], "id")
            reader.context = "annotations[\(i)] (id \(id))"
            for key in requiredAnnotationFields where o[key] == nil {
                throw reader.error("has no \"\(key)\", which pycocotools' COCOeval needs (it raises KeyError)")
            }
            let imageId = try reader.int(o["image_id"], "image_id")
            let segmentation = try o["segmentation"].map { try reader.segmentation($0) }
            var bbox = try o["bbox"].map { try reader.box($0) }
            var area = try o["area"].map { try reader.double($0, "area") }
            // Files without bbox or area get them from the mask, as the COCO tools would compute them.
            if (bbox == nil || area == nil), let segmentation, let (h, w) = sizes[imageId] {
                let mask = segmentation.rle(imageHeight: h, imageWidth: w)
                bbox = bbox ?? mask.boundingBox
                area = area ?? Double(mask.area)
            }
            guard let bbox else { throw reader.error("has neither bbox nor segmentation") }
            return COCOAnnotation(id: id, imageId: imageId,
                                  categoryId: try reader.int(o["category_id"], "category_id"), bbox: bbox,
                                  area: area ?? bbox[2] * bbox[3],
                                  isCrowd: try o["iscrowd"].map { try reader.double($0, "iscrowd") != 0 } ?? false,
                                  segmentation: segmentation)
        }
    }

    /// The file as JSON; masks keep the form they were given in. Keys are in sorted order, as these
    /// files have always been written.
    public func jsonValue() -> JSONValue {
        .object([
            "annotations": .array(annotations.map { a in
                var o: JSONObject = [
                    "area": .double(a.area), "bbox": jsonNumbers(a.bbox), "category_id": .int(a.categoryId),
                    "id": .int(a.id), "image_id": .int(a.imageId), "iscrowd": .int(a.isCrowd ? 1 : 0)]
                if let s = a.segmentation { o["segmentation"] = s.jsonValue() }
                return .object(o)
            }),
            "categories": .array(categories.map {
                .object(["id": .int($0.id), "name": .string($0.name), "supercategory": .string($0.supercategory)])
            }),
            "images": .array(images.map {
                .object(["file_name": .string($0.fileName), "height": .int($0.height), "id": .int($0.id),
                         "width": .int($0.width)])
            }),
        ])
    }

    /// Writes the instances JSON file.
    public func write(to url: URL) throws {
        try writeJSON(jsonValue(), to: url)
    }
}

/// One entry of a COCO results file: `{"image_id", "category_id", "score", "bbox"?, "segmentation"?}`.
public struct COCODetection: Equatable, Sendable {
    public var imageId: Int
    public var categoryId: Int
    public var score: Double
    /// [x, y, w, h], if the detection has a box.
    public var bbox: [Double]?
    /// The mask (RLE or polygons), if the detection has one.
    public var segmentation: COCOSegmentation?

    public init(imageId: Int, categoryId: Int, score: Double, bbox: [Double]? = nil,
                segmentation: COCOSegmentation? = nil) {
        self.imageId = imageId
        self.categoryId = categoryId
        self.score = score
        self.bbox = bbox
        self.segmentation = segmentation
    }

    /// Reads a results file (a JSON array); throws `PathError` naming the file if it is malformed.
    public static func load(contentsOf url: URL) throws -> [COCODetection] {
        let root = try readJSON(url)
        var reader = FieldReader(file: url.path)
        guard case .array(let items) = root else {
            throw PathError(url.path, "expected a JSON array of detections")
        }
        return try items.enumerated().map { i, item in
            reader.context = "detection \(i)"
            let o = try reader.object(item)
            let detection = COCODetection(
                imageId: try reader.int(o["image_id"], "image_id"),
                categoryId: try reader.int(o["category_id"], "category_id"),
                score: try reader.double(o["score"], "score"),
                bbox: try o["bbox"].flatMap { $0 == .array([]) || $0 == .null ? nil : try reader.box($0) },
                segmentation: try o["segmentation"].map { try reader.segmentation($0) })
            if detection.bbox == nil && detection.segmentation == nil {
                throw reader.error("has neither bbox nor segmentation")
            }
            return detection
        }
    }

    /// Writes detections as a COCO results file (keys in sorted order).
    public static func write(_ detections: [COCODetection], to url: URL) throws {
        try writeJSON(.array(detections.map { d in
            var o: JSONObject = [:]
            if let b = d.bbox { o["bbox"] = jsonNumbers(b) }
            o["category_id"] = .int(d.categoryId)
            o["image_id"] = .int(d.imageId)
            o["score"] = .double(d.score)
            if let s = d.segmentation { o["segmentation"] = s.jsonValue() }
            return .object(o)
        }), to: url)
    }
}

extension COCOSegmentation {
    /// The JSON form: a list of polygons, or `{"size": [h, w], "counts": string or list}`.
    public func jsonValue() -> JSONValue {
        switch self {
        case .polygons(let p): return .array(p.map(jsonNumbers))
        case .rle(let r):
            return .object(["counts": .string(r.compressedCounts), "size": .array([.int(r.height), .int(r.width)])])
        case .uncompressedRLE(let r):
            return .object(["counts": .array(r.counts.map { .int(Int($0)) }),
                            "size": .array([.int(r.height), .int(r.width)])])
        }
    }
}

private func jsonNumbers(_ a: [Double]) -> JSONValue { .array(a.map { .double($0) }) }

// MARK: - Reading helpers

private func readJSON(_ url: URL) throws -> JSONValue {
    let data: Data
    do {
        data = try Data(contentsOf: url)
    } catch {
        throw PathError(url.path, "cannot be read (missing or not a file)")
    }
    do {
        return try JSONValue.parse(data)
    } catch let e as JSONSyntaxError {
        throw PathError(url.path, "is not valid JSON (\(e))")
    }
}

private func writeJSON(_ value: JSONValue, to url: URL) throws {
    try writeAtomically(Data(value.serialized().utf8), to: url)
}

/// Typed access to JSON values, with errors that say where in which file.
private struct FieldReader {
    let file: String
    var context = ""

    func error(_ problem: String) -> PathError {
        PathError(file, context.isEmpty ? problem : "\(context) \(problem)")
    }

    func object(_ v: JSONValue) throws -> JSONObject {
        guard case .object(let o) = v else { throw error("is not a JSON object") }
        return o
    }

    func array(_ v: JSONValue?, _ key: String) throws -> [JSONValue] {
        guard case .array(let a)? = v else { throw error("has no \"\(key)\" list") }
        return a
    }

    func double(_ v: JSONValue?, _ key: String) throws -> Double {
        switch v {
        case .number(let n)?:
            guard n.doubleValue.isFinite else { throw error("has a non-finite \"\(key)\"") }
            return n.doubleValue
        case .bool(let b)?: return b ? 1 : 0
        case nil: throw error("has no \"\(key)\"")
        default: throw error("has a non-numeric \"\(key)\"")
        }
    }

    func int(_ v: JSONValue?, _ key: String) throws -> Int {
        let d = try double(v, key)
        guard d == d.rounded(), abs(d) < 9e15 else { throw error("has a non-integer \"\(key)\" \(d)") }
        return Int(d)
    }

    func numbers(_ v: JSONValue, _ what: String) throws -> [Double] {
        guard case .array(let a) = v else { throw error("has a \(what) that is not a list of numbers") }
        return try a.map { x in
            guard let d = x.doubleValue else { throw error("has a \(what) that is not a list of numbers") }
            guard d.isFinite, abs(d) < 1e8 else {
                throw error("has a \(what) number \(d) that is \(d.isFinite ? "out of range (beyond ±1e8, which overflows the area and mask arithmetic)" : "not finite")")
            }
            return d
        }
    }

    func box(_ v: JSONValue) throws -> [Double] {
        let b = try numbers(v, "bbox")
        guard b.count == 4 else { throw error("has a bbox with \(b.count) numbers instead of 4") }
        return b
    }

    func segmentation(_ v: JSONValue) throws -> COCOSegmentation {
        if case .array(let list) = v {
            return .polygons(try list.map { try numbers($0, "polygon") })
        }
        guard case .object(let o) = v, case .array(let size)? = o["size"], size.count == 2 else {
            throw error("has a segmentation that is neither polygons nor an RLE with size [h, w]")
        }
        let h = try int(size[0], "size"), w = try int(size[1], "size")
        guard h >= 0, w >= 0, h * w < Int(UInt32.max) else { throw error("has an RLE size out of range") }
        if case .string(let string)? = o["counts"] {
            guard let rle = RLE(compressedCounts: string, height: h, width: w) else {
                throw error("has a malformed compressed RLE counts string")
            }
            guard rle.counts.reduce(0, { $0 + Int($1) }) == h * w else {
                throw error("has RLE counts that do not add up to its size \(h) x \(w)")
            }
            return .rle(rle)
        }
        let counts = try numbers(o["counts"] ?? .null, "counts")
        guard counts.allSatisfy({ $0 >= 0 && $0 == $0.rounded() }),
              Int(counts.reduce(0, +)) == h * w else {
            throw error("has RLE counts that do not add up to its size \(h) x \(w)")
        }
        return .uncompressedRLE(RLE(height: h, width: w, counts: counts.map { UInt32($0) }))
    }
}
