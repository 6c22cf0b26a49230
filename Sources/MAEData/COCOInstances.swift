import Foundation
import MAECOCO
import MAEJSON

// COCO instances files are read and written through MAECOCO (its JSON reader, types and the
// pycocotools mask API); this file adds the dataset view the tasks train from.

/// One object of a COCO image.
public struct COCOInstance: Sendable, Equatable {
    /// The annotation's id in the file.
    public var id: Int
    /// Contiguous class index 0..<K, in the order of the file's categories sorted by id.
    public var label: Int
    public var categoryId: Int
    /// [x, y, width, height] in pixels.
    public var bbox: [Double]
    public var area: Double
    public var isCrowd: Bool
    /// The segmentation as written in the file (polygons, compressed or uncompressed RLE).
    public var segmentation: COCOSegmentation?

    /// The object's mask at the image size, polygons rasterised as pycocotools' `annToRLE` does;
    /// nil without a segmentation.
    public func mask(height: Int, width: Int) -> RLE? {
        segmentation?.rle(imageHeight: height, imageWidth: width)
    }
}

/// A COCO instances dataset: images in a folder and their objects, per image.
public struct COCODetectionDataset: Sendable {
    public let imageFolder: URL
    public let images: [COCOImage]
    /// Objects per image, parallel to `images`.
    public let instances: [[COCOInstance]]
    /// Category names in label order (categories sorted by id).
    public let classes: [String]
    public let categoryIds: [Int]

    public var count: Int { images.count }
    public func imageURL(_ i: Int) -> URL { imageFolder.appendingPathComponent(images[i].fileName) }

    /// Reads `annotations` (through MAECOCO), checking that every annotation's image and category are
    /// listed, that boxes have non-negative sides, that RLE masks have their image's size, and that
    /// every listed image exists in `imageFolder`.
    public init(annotations: URL, imageFolder: URL) throws {
        let file = try COCODataset(contentsOf: annotations)
        self.imageFolder = imageFolder
        let categories = file.categories.sorted { $0.id < $1.id }
        classes = categories.map(\.name)
        categoryIds = categories.map(\.id)
        let labelOf = Dictionary(categories.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { a, _ in a })
        let rowOf = Dictionary(file.images.enumerated().map { ($1.id, $0) }, uniquingKeysWith: { a, _ in a })
        var instances = [[COCOInstance]](repeating: [], count: file.images.count)
        for a in file.annotations {
            guard let row = rowOf[a.imageId] else {
                throw PathError(annotations, "has annotation \(a.id) pointing at image id \(a.imageId), which is not in its images list", period: false)
            }
            guard let label = labelOf[a.categoryId] else {
                throw PathError(annotations, "has annotation \(a.id) with category id \(a.categoryId), which is not in its categories list", period: false)
            }
            guard a.bbox[2] >= 0, a.bbox[3] >= 0 else {
                throw PathError(annotations, "has annotation \(a.id) whose bbox has a negative width or height", period: false)
            }
            let image = file.images[row]
            switch a.segmentation {
            case .rle(let r)?, .uncompressedRLE(let r)?:
                guard r.height == image.height, r.width == image.width else {
                    throw PathError(annotations, "has annotation \(a.id) with a \(r.width)x\(r.height) mask on the \(image.width)x\(image.height) image \(image.id)", period: false)
                }
            default: break
            }
            instances[row].append(COCOInstance(id: a.id, label: label, categoryId: a.categoryId, bbox: a.bbox, area: a.area,
                                               isCrowd: a.isCrowd, segmentation: a.segmentation))
        }
        for image in file.images where !FileManager.default.fileExists(atPath: imageFolder.appendingPathComponent(image.fileName).path) {
            throw PathError(annotations, "lists image \(image.id) as \(image.fileName), which is missing from \(imageFolder.path)", period: false)
        }
        images = file.images
        self.instances = instances
    }

    /// Image `i` with its objects as a `DenseSample`: boxes, labels and decoded masks (crowd regions
    /// left out unless `includeCrowd`, as detectron2 trains). The image must have the size the file gives it.
    public func sample(_ i: Int, includeCrowd: Bool = false) throws -> DenseSample {
        let url = imageURL(i)
        let image = try ImageCodec.decode(contentsOf: url)
        let entry = images[i]
        guard image.width == entry.width, image.height == entry.height else {
            throw PathError(url, "is \(image.width)x\(image.height), but its annotations say \(entry.width)x\(entry.height)", period: false)
        }
        let kept = instances[i].filter { includeCrowd || !$0.isCrowd }
        // Masks for all instances or for none: a sample is never half-masked.
        let masks = kept.compactMap { $0.mask(height: image.height, width: image.width)?.decodeRowMajor() }
        return DenseSample(image: image, boxes: kept.map(\.bbox), labels: kept.map(\.label),
                           masks: masks.count == kept.count ? masks : [])
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
        guard !names.isEmpty else { throw PathError(imageFolder, "has no images", period: false) }
        images = names.map { imageFolder.appendingPathComponent($0) }
        labels = names.map { labelFolder.appendingPathComponent(($0 as NSString).deletingPathExtension + ".png") }
        for url in labels where !FileManager.default.fileExists(atPath: url.path) {
            throw PathError(url, "does not exist, but its image is in \(imageFolder.path)", period: false)
        }
        self.reduceZeroLabel = reduceZeroLabel
    }

    /// The image and its label map, which must be the image's size.
    public func sample(_ i: Int) throws -> (image: RGBImage, labels: LabelMap) {
        let image = try ImageCodec.decode(contentsOf: images[i])
        var map = try LabelMapCodec.read(contentsOf: labels[i])
        guard map.width == image.width, map.height == image.height else {
            throw PathError(labels[i], "is a \(map.width)x\(map.height) label map for a \(image.width)x\(image.height) image", period: false)
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
