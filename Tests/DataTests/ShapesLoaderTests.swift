import Foundation
import MAECOCO
import MAEData
import XCTest

final class ShapesLoaderTests: XCTestCase {
    static let small = ShapesCounts(pretrain: 12, supervised: 10, train: 30, val: 10, scenesTrain: 6, scenesVal: 3)

    func files(_ root: URL) throws -> [String: Data] {
        var out: [String: Data] = [:]
        let e = FileManager.default.enumerator(atPath: root.path)!
        while let rel = e.nextObject() as? String {
            let url = root.appendingPathComponent(rel)
            if !ImageFolderTestHelpers.isDirectory(url) { out[rel] = try Data(contentsOf: url) }
        }
        return out
    }

    /// Same seed, same bytes; another seed, other bytes; an identical manifest skips the work.
    func testShapesIsDeterministicAndCached() throws {
        let a = temporaryFolder("a"), b = temporaryFolder("b"), c = temporaryFolder("c")
        try ShapesDataset.generate(to: a, size: 24, seed: 5, counts: Self.small)
        try ShapesDataset.generate(to: b, size: 24, seed: 5, counts: Self.small)
        try ShapesDataset.generate(to: c, size: 24, seed: 6, counts: Self.small)
        let fa = try files(a), fb = try files(b), fc = try files(c)
        XCTAssertEqual(fa.count, 12 + 10 + 30 + 10 + 2 * (6 + 3) + 2 + 1)
        XCTAssertEqual(fa, fb)
        XCTAssertNotEqual(fa["scenes_train/instances.json"], fc["scenes_train/instances.json"])
        // ensure() with the same parameters must not rewrite anything: plant a marker and check it survives.
        let marker = a.appendingPathComponent("train/marker.txt")
        try Data("x".utf8).write(to: marker)
        let paths = try ShapesDataset.ensure(at: a, size: 24, seed: 5, counts: Self.small)
        XCTAssertTrue(FileManager.default.fileExists(atPath: marker.path))
        let train = try ImageFolder(root: paths.train)
        XCTAssertEqual(train.classes, ShapesDataset.classes.sorted())
        XCTAssertEqual(train.count, 30)
        // Scenes: COCO file readable, class maps the image size.
        let coco = try COCODetectionDataset(annotations: ShapesPaths.sceneInstances(paths.scenesTrain),
                                            imageFolder: ShapesPaths.sceneImages(paths.scenesTrain))
        XCTAssertEqual(coco.count, 6)
        XCTAssertGreaterThan(coco.instances.joined().count, 6)
        let seg = try SegmentationDataset(imageFolder: ShapesPaths.sceneImages(paths.scenesTrain),
                                          labelFolder: ShapesPaths.sceneClassMaps(paths.scenesTrain), reduceZeroLabel: false)
        let sample = try seg.sample(0)
        XCTAssertEqual(sample.image.width, 48)
        XCTAssertTrue(sample.labels.labels.allSatisfy { $0 >= 0 && $0 <= Int32(ShapesDataset.classes.count) })
        // Each instance's visible mask paints its class in the class map.
        for inst in coco.instances[0] {
            // RLE masks are the exact visible pixels; polygons rasterise slightly differently at the edges.
            if case .rle(let rle)? = inst.segmentation {
                for (i, on) in rle.decodeRowMajor().enumerated() where on != 0 {
                    XCTAssertEqual(sample.labels.labels[i], Int32(inst.label + 1))
                }
            }
        }
    }

    /// The batches do not depend on the number of workers, and differ across epochs.
    func testLoaderIsDeterministicAcrossWorkerCounts() throws {
        let root = temporaryFolder()
        let paths = try ShapesDataset.generate(to: root, size: 16, seed: 1,
                                               counts: ShapesCounts(pretrain: 0, supervised: 0, train: 23, val: 0, scenesTrain: 0, scenesVal: 0))
        let folder = try ImageFolder(root: paths.train)
        func run(workers: Int, epoch: Int) throws -> [Batch] {
            let loader = DataLoader(source: folder, transform: MAETransform.train(RandomResizedCrop(size: 12, scale: 0.2...1)),
                                    batchSize: 5, seed: 9, workers: workers, prefetch: 2)
            let it = loader.epoch(epoch)
            var out: [Batch] = []
            while let b = try it.next() { out.append(b) }
            return out
        }
        let serial = try run(workers: 0, epoch: 0)
        XCTAssertEqual(serial.map(\.count), [5, 5, 5, 5, 3])
        XCTAssertEqual(Set(serial.flatMap(\.indices)), Set(0..<23))
        XCTAssertEqual(serial[0].images.count, 5 * 3 * 12 * 12)
        for workers in [1, 3] {
            let parallel = try run(workers: workers, epoch: 0)
            XCTAssertEqual(parallel.map(\.indices), serial.map(\.indices))
            XCTAssertEqual(parallel.map(\.labels), serial.map(\.labels))
            XCTAssertEqual(parallel.map(\.images), serial.map(\.images))
        }
        XCTAssertNotEqual(try run(workers: 2, epoch: 1).map(\.indices), serial.map(\.indices))
        // Labels follow the folder.
        for b in serial { for (i, l) in zip(b.indices, b.labels) { XCTAssertEqual(folder.samples[i].label, l) } }
    }

    func testLoaderSurfacesDecodeErrors() throws {
        let root = temporaryFolder()
        let bad = root.appendingPathComponent("cls/broken.png")
        try FileManager.default.createDirectory(at: bad.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data("not a png".utf8).write(to: bad)
        let loader = DataLoader(source: try ImageFolder(root: root), transform: MAETransform.eval(size: 8, cropRatio: 1),
                                batchSize: 1, workers: 2)
        XCTAssertThrowsError(try loader.epoch(0).next()) { XCTAssertTrue("\($0)".contains("broken.png"), "\($0)") }
    }
}

enum ImageFolderTestHelpers {
    static func isDirectory(_ url: URL) -> Bool {
        var d: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &d) && d.boolValue
    }
}

final class ShapesSizeTests: XCTestCase {
    /// 1x1 scenes hold no shape: refused in one sentence before anything is written.
    func testTinyScenesAreRefused() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("scenes-\(UUID())")
        XCTAssertThrowsError(try ShapesDataset.generate(to: root, size: 8, seed: 0, counts: .standard, sceneSize: 1)) {
            XCTAssertTrue("\($0)".contains("cannot hold Shapes scenes of size 1 (use --scene-size 16...2048)"), "\($0)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: root.path))
    }
}
