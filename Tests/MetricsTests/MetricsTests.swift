// Parity of the COCO mask API, COCOeval and mmseg's metrics with references written by
// scripts/make_metrics_fixtures.py (pycocotools 2.0.11; mmseg's functions re-implemented in numpy).
import Foundation
import MAECOCO
import MAEJSON
@testable import MAEMetrics
import XCTest

private func fixture(_ name: String) -> URL {
    Bundle.module.url(forResource: "Fixtures/" + name, withExtension: nil)!
}

/// A fixture as Foundation values; numbers are parsed by MAEJSON because JSONSerialization on Linux
/// rounds long decimals wrongly.
private func loadAny(_ name: String) throws -> Any {
    func convert(_ v: JSONValue) -> Any {
        switch v {
        case .null: return NSNull()
        case .bool(let b): return b
        case .number(let n): return NSNumber(value: n.doubleValue)
        case .string(let s): return s
        case .array(let a): return a.map(convert)
        case .object(let o): return Dictionary(o.map { ($0.key, convert($0.value)) }, uniquingKeysWith: { $1 })
        }
    }
    return convert(try JSONValue.parse(Data(contentsOf: fixture(name))))
}

private func loadJSON(_ name: String) throws -> [String: Any] {
    try XCTUnwrap(try loadAny(name) as? [String: Any])
}

private func doubles(_ v: Any?) -> [Double] { (v as? [Any] ?? []).map { ($0 as? NSNumber)?.doubleValue ?? .nan } }
private func ints(_ v: Any?) -> [Int] { (v as? [Any] ?? []).map { ($0 as? NSNumber)?.intValue ?? -1 } }
private func int(_ v: Any?) -> Int { (v as? NSNumber)?.intValue ?? -1 }

/// Element-wise |a - e| <= tol (NaN matches null/NaN), reporting the worst pair.
private func assertClose(_ actual: [Double], _ expected: [Double], tol: Double, _ name: String,
                         file: StaticString = #filePath, line: UInt = #line) {
    XCTAssertEqual(actual.count, expected.count, "\(name): count", file: file, line: line)
    var worst = 0.0, at = -1
    for (i, (a, e)) in zip(actual, expected).enumerated() {
        if a.isNaN && e.isNaN { continue }
        let d = a.isNaN || e.isNaN ? .infinity : abs(a - e)
        if d > worst { worst = d; at = i }
    }
    XCTAssert(worst <= tol, "\(name): max diff \(worst) at \(at): \(at >= 0 ? "\(actual[at]) vs \(expected[at])" : "")",
              file: file, line: line)
}

final class MaskAPITests: XCTestCase {
    func testEncodeDecodeAreaBoxAndStrings() throws {
        let ref = try loadJSON("rle_reference.json")
        let masks = try XCTUnwrap(ref["masks"] as? [[String: Any]])
        XCTAssertEqual(masks.count, 20)
        for (n, m) in masks.enumerated() {
            let h = int(m["height"]), w = int(m["width"])
            let rowMajor = (m["row_major"] as! String).utf8.map { $0 == UInt8(ascii: "1") ? UInt8(1) : 0 }
            let rle = RLE(rowMajorMask: rowMajor, height: h, width: w)
            XCTAssertEqual(rle.counts.map { Int($0) }, ints(m["counts"]), "mask \(n) counts")
            XCTAssertEqual(rle.compressedCounts, m["string"] as? String, "mask \(n) string")
            XCTAssertEqual(rle.area, int(m["area"]), "mask \(n) area")
            XCTAssertEqual(rle.boundingBox, doubles(m["bbox"]), "mask \(n) bbox")
            XCTAssertEqual(rle.decodeRowMajor(), rowMajor, "mask \(n) decode")
            let parsed = RLE(compressedCounts: m["string"] as! String, height: h, width: w)
            XCTAssertEqual(parsed, rle, "mask \(n) string decode")
        }
    }

    func testPolygonsAndBoxesRasteriseAsMaskApi() throws {
        let ref = try loadJSON("rle_reference.json")
        for (n, p) in try XCTUnwrap(ref["polygons"] as? [[String: Any]]).enumerated() {
            let h = int(p["height"]), w = int(p["width"])
            let polygons = (p["polygons"] as! [Any]).map { doubles($0) }
            let parts = polygons.map { RLE(polygon: $0, height: h, width: w).compressedCounts }
            XCTAssertEqual(parts, p["parts"] as! [String], "polygon case \(n) parts")
            let merged = RLE(polygons: polygons, height: h, width: w)
            XCTAssertEqual(merged.compressedCounts, p["merged"] as? String, "polygon case \(n) merged")
            XCTAssertEqual(merged.area, int(p["area"]), "polygon case \(n) area")
            XCTAssertEqual(merged.boundingBox, doubles(p["bbox"]), "polygon case \(n) bbox")
        }
        for (n, b) in try XCTUnwrap(ref["boxes"] as? [[String: Any]]).enumerated() {
            let rle = RLE(box: doubles(b["box"]), height: int(b["height"]), width: int(b["width"]))
            XCTAssertEqual(rle.compressedCounts, b["string"] as? String, "box \(n)")
        }
    }

    func testMergeIoUAndLongCounts() throws {
        let ref = try loadJSON("rle_reference.json")
        for (n, m) in try XCTUnwrap(ref["merges"] as? [[String: Any]]).enumerated() {
            let h = int(m["height"]), w = int(m["width"])
            let inputs = (m["inputs"] as! [String]).map { RLE(compressedCounts: $0, height: h, width: w)! }
            XCTAssertEqual(RLE.merge(inputs).compressedCounts, m["union"] as? String, "merge \(n) union")
            XCTAssertEqual(RLE.merge(inputs, intersect: true).compressedCounts, m["intersection"] as? String,
                           "merge \(n) intersection")
        }
        for (n, c) in try XCTUnwrap(ref["ious"] as? [[String: Any]]).enumerated() {
            let h = int(c["height"]), w = int(c["width"])
            let dt = (c["dt"] as! [String]).map { RLE(compressedCounts: $0, height: h, width: w)! }
            let gt = (c["gt"] as! [String]).map { RLE(compressedCounts: $0, height: h, width: w)! }
            let iou = RLE.iou(dt, gt, isCrowd: ints(c["iscrowd"]).map { $0 != 0 })
            assertClose(iou.flatMap { $0 }, (c["iou"] as! [Any]).flatMap { doubles($0) }, tol: 1e-15, "mask iou \(n)")
        }
        for (n, c) in try XCTUnwrap(ref["box_ious"] as? [[String: Any]]).enumerated() {
            let iou = RLE.boxIoU((c["dt"] as! [Any]).map { doubles($0) }, (c["gt"] as! [Any]).map { doubles($0) },
                                 isCrowd: ints(c["iscrowd"]).map { $0 != 0 })
            assertClose(iou.flatMap { $0 }, (c["iou"] as! [Any]).flatMap { doubles($0) }, tol: 1e-15, "box iou \(n)")
        }
        for (n, c) in try XCTUnwrap(ref["strings"] as? [[String: Any]]).enumerated() {
            let rle = RLE(height: int(c["height"]), width: int(c["width"]), counts: ints(c["counts"]).map { UInt32($0) })
            XCTAssertEqual(rle.compressedCounts, c["string"] as? String, "string \(n)")
            XCTAssertEqual(RLE(compressedCounts: c["string"] as! String, height: rle.height, width: rle.width), rle)
        }
    }

    func testMalformedCountsStringIsRejected() {
        XCTAssertNil(RLE(compressedCounts: "a~", height: 2, width: 2))
        XCTAssertNil(RLE(compressedCounts: "P", height: 2, width: 2))  // continuation bit with nothing after
    }
}

final class COCOEvalTests: XCTestCase {
    func testThresholdsAreNumpyLinspace() throws {
        let ref = try loadJSON("coco_params.json")
        let p = COCOEvalParams()
        XCTAssertEqual(p.iouThresholds, doubles(ref["iouThrs"]))
        XCTAssertEqual(p.recallThresholds, doubles(ref["recThrs"]))
    }

    func testStatsAndLinesMatchPycocotools() throws {
        for name in ["bboxres", "segmres", "mixed", "dense"] {
            let expected = try loadJSON("coco_\(name)_expected.json")
            for type in COCOIoUType.allCases {
                let result = try COCOEvaluator.evaluateFiles(groundTruth: fixture("coco_\(name)_gt.json"),
                                                             detections: fixture("coco_\(name)_dt.json"),
                                                             iouType: type)
                let e = try XCTUnwrap(expected[type.rawValue] as? [String: Any])
                assertClose(result.stats, doubles(e["stats"]), tol: 1e-4, "\(name) \(type) stats")
                assertClose(result.stats, doubles(e["stats"]), tol: 1e-12, "\(name) \(type) stats (exact)")
                XCTAssertEqual(result.summaryLines, e["lines"] as? [String], "\(name) \(type) lines")
            }
        }
    }

    func testNoDetectionsGivesZeroAPAndMinusOneWithoutGroundTruth() throws {
        let gt = try COCODataset(contentsOf: fixture("coco_bboxres_gt.json"))
        let result = try COCOEvaluator(groundTruth: gt, detections: [], iouType: .bbox).run()
        XCTAssertEqual(result.stats[0], 0)
        // Category 20 has no ground truth: its precision stays -1.
        let k = try XCTUnwrap(result.categoryIds.firstIndex(of: 20))
        XCTAssertEqual(result.recall[k * 4 * 3], -1)
    }

    func testMalformedJSONNamesTheFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-bad-\(getpid()).json")
        try Data("{\"images\": [".utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try COCODataset(contentsOf: url)) { error in
            XCTAssert("\(error)".contains(url.path), "\(error)")
        }
        XCTAssertThrowsError(try COCODetection.load(contentsOf: url)) { error in
            XCTAssert("\(error)".contains(url.path), "\(error)")
        }
        let missing = url.appendingPathExtension("missing")
        XCTAssertThrowsError(try COCODataset(contentsOf: missing)) { error in
            XCTAssert("\(error)".contains(missing.path), "\(error)")
        }
    }

    func testDetectionOnUnknownImageNamesTheFile() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-dt-\(getpid()).json")
        try COCODetection.write([COCODetection(imageId: 999_999, categoryId: 1, score: 0.5, bbox: [0, 0, 5, 5])],
                                to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try COCOEvaluator.evaluateFiles(groundTruth: fixture("coco_mixed_gt.json"),
                                                             detections: url, iouType: .bbox)) { error in
            let message = "\(error)"
            XCTAssert(message.contains(url.path) && message.contains("999999"), message)
        }
    }

    func testDatasetRoundTripsThroughJSON() throws {
        let gt = try COCODataset(contentsOf: fixture("coco_mixed_gt.json"))
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-rt-\(getpid()).json")
        try gt.write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertEqual(try COCODataset(contentsOf: url), gt)
    }
}

final class SegmentationMetricsTests: XCTestCase {
    func testMatchesMmseg() throws {
        let cases = try XCTUnwrap(try loadAny("seg_reference.json") as? [[String: Any]])
        XCTAssertEqual(cases.count, 4)
        for c in cases {
            let name = c["name"] as! String
            var metrics = SegmentationMetrics(numClasses: int(c["num_classes"]), ignoreIndex: Int32(int(c["ignore_index"])),
                                              reduceZeroLabel: c["reduce_zero_label"] as! Bool)
            for image in c["images"] as! [[String: Any]] {
                try metrics.add(prediction: ints(image["pred"]).map { Int32($0) },
                                groundTruth: ints(image["gt"]).map { Int32($0) })
            }
            XCTAssertEqual(metrics.areaIntersect.map { Double($0) }, doubles(c["area_intersect"]), name)
            XCTAssertEqual(metrics.areaUnion.map { Double($0) }, doubles(c["area_union"]), name)
            XCTAssertEqual(metrics.areaPrediction.map { Double($0) }, doubles(c["area_pred"]), name)
            XCTAssertEqual(metrics.areaLabel.map { Double($0) }, doubles(c["area_label"]), name)
            let r = metrics.compute()
            assertClose(r.iou, doubles(c["IoU"]), tol: 1e-12, "\(name) IoU")
            assertClose(r.acc, doubles(c["Acc"]), tol: 1e-12, "\(name) Acc")
            XCTAssert(r.iou.contains { $0.isNaN } || r.acc.contains { $0.isNaN }, "\(name) exercises an absent class")
            assertClose([r.mIoU, r.mAcc, r.aAcc], doubles([c["mIoU"]!, c["mAcc"]!, c["aAcc"]!]), tol: 1e-4, name)
        }
    }

    /// `--num-classes 2000000000` grew to 23 GB and was OOM-killed; it is refused before allocating.
    func testClassCountAndIgnoreIndexAreBounded() {
        XCTAssertNil(SegmentationMetrics.problem(numClasses: 65536, ignoreIndex: 255))
        XCTAssertEqual(SegmentationMetrics.problem(numClasses: 2_000_000_000, ignoreIndex: 255),
                       "--num-classes 2000000000 exceeds 65536: label maps are 8- or 16-bit PNGs, whose labels are 0...65535")
        XCTAssertEqual(SegmentationMetrics.problem(numClasses: 0, ignoreIndex: 255), "--num-classes must be positive, not 0")
        XCTAssertTrue(SegmentationMetrics.problem(numClasses: 3, ignoreIndex: -1)?.hasPrefix("--ignore-index -1 is not a label") ?? false)
        XCTAssertTrue(SegmentationMetrics.problem(numClasses: 3, ignoreIndex: 70000)?.hasPrefix("--ignore-index 70000") ?? false)
        let folder = FileManager.default.temporaryDirectory
        XCTAssertThrowsError(try SegmentationMetrics.evaluateDirectories(
            groundTruth: folder, predictions: folder, numClasses: Int.max,
            readLabelMap: { _ in XCTFail("nothing is read"); return (0, 0, []) })) { e in
            XCTAssertTrue("\(e)".contains("exceeds 65536"), "\(e)")
        }
    }

    func testMismatchedSizeNamesTheImage() {
        var metrics = SegmentationMetrics(numClasses: 3)
        XCTAssertThrowsError(try metrics.add(prediction: [0, 1, 2], groundTruth: [0, 1], name: "val/0001.png")) {
            XCTAssert("\($0)".contains("val/0001.png"), "\($0)")
        }
    }
}

/// Hostile ground truth for coco-eval: pycocotools' COCOeval is the contract, so each file either
/// gives pycocotools' numbers or is refused in one sentence (what pycocotools does with each is
/// recorded by scripts/check_coco_hostile.py).
final class COCOHostileInputTests: XCTestCase {
    /// coco_mixed_gt.json with `edit` applied, written to a temporary file.
    func editedGroundTruth(_ edit: (inout [JSONValue], inout [JSONValue]) -> Void) throws -> URL {
        guard case .object(var top) = try JSONValue.parse(Data(contentsOf: fixture("coco_mixed_gt.json"))),
              var images = top["images"]?.arrayValue, var annotations = top["annotations"]?.arrayValue else {
            throw XCTSkip("fixture is not an instances file")
        }
        edit(&images, &annotations)
        top["images"] = .array(images)
        top["annotations"] = .array(annotations)
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("hostile-\(UUID()).json")
        try Data(JSONValue.object(top).serialized().utf8).write(to: url)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url
    }

    func setField(_ annotations: inout [JSONValue], _ i: Int, _ key: String, _ value: JSONValue?) {
        guard case .object(var o) = annotations[i] else { return }
        o[key] = value
        annotations[i] = .object(o)
    }

    func evaluate(_ gt: URL, _ type: COCOIoUType) throws -> [Double] {
        try COCOEvaluator.evaluateFiles(groundTruth: gt, detections: fixture("coco_mixed_dt.json"), iouType: type).stats
    }

    func assertRefused(_ gt: URL, _ type: COCOIoUType, _ expected: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try evaluate(gt, type), file: file, line: line) { e in
            XCTAssertEqual("\(e)", "\(gt.path): \(expected).", file: file, line: line)
        }
    }

    func unchanged(_ type: COCOIoUType) throws -> [Double] { try evaluate(fixture("coco_mixed_gt.json"), type) }

    /// pycocotools gives 0.4223 (bbox) instead of 0.4229: it keeps the last annotation of an id twice.
    func testDuplicateAnnotationIdIsRefused() throws {
        let gt = try editedGroundTruth { _, a in setField(&a, 3, "id", a[0]["id"]) }
        for type in COCOIoUType.allCases {
            assertRefused(gt, type, "annotation id 1 appears twice (annotations[0] and annotations[3]); " +
                          "pycocotools would evaluate the last one twice and drop the other")
        }
    }

    /// pycocotools raises KeyError for a missing area or iscrowd, and for a missing bbox with
    /// boxes; with masks it never reads bbox, and neither do we (same AP).
    func testMissingFieldsAreRefusedWherePycocotoolsNeedsThem() throws {
        for key in ["area", "iscrowd"] {
            let gt = try editedGroundTruth { _, a in setField(&a, 2, key, nil) }
            for type in COCOIoUType.allCases {
                assertRefused(gt, type, "annotations[2] (id 3) has no \"\(key)\", which pycocotools' COCOeval needs (it raises KeyError)")
            }
        }
        let noBox = try editedGroundTruth { _, a in setField(&a, 0, "bbox", nil) }
        assertRefused(noBox, .bbox, "annotations[0] (id 1) has no \"bbox\", which pycocotools' COCOeval needs (it raises KeyError)")
        XCTAssertEqual(try evaluate(noBox, .segm), try unchanged(.segm))
    }

    /// pycocotools raises on `[[1, 2, 3]]` and on `[]` when it rasterises masks; boxes never read them.
    func testShortPolygonsAreRefusedForMasks() throws {
        let three = try editedGroundTruth { _, a in setField(&a, 0, "segmentation", .array([.array([.int(1), .int(2), .int(3)])])) }
        assertRefused(three, .segm, "annotations[0] (id 1) has a polygon of 3 numbers (a polygon is x, y pairs of at least " +
                      "3 points: an even count of 6 or more)")
        XCTAssertEqual(try evaluate(three, .bbox), try unchanged(.bbox), "as pycocotools: boxes ignore the mask")
        let none = try editedGroundTruth { _, a in setField(&a, 0, "segmentation", .array([])) }
        assertRefused(none, .segm, "annotations[0] (id 1) has an empty polygon list")
    }

    func testOverflowingBoxSaysWhatIsWrong() throws {
        let gt = try editedGroundTruth { _, a in setField(&a, 0, "bbox", .array([.double(1e308), .int(1), .int(2), .int(3)])) }
        assertRefused(gt, .bbox, "annotations[0] (id 1) has a bbox number 1e+308 that is out of range (beyond ±1e8, which overflows the area and mask arithmetic)")
    }

    /// It used to surface as "detection 12 refers to image id 2, which is not in ...".
    func testDuplicateImageIdIsNamed() throws {
        let gt = try editedGroundTruth { images, _ in
            guard case .object(var o) = images[1] else { return }
            o["id"] = images[0]["id"]
            images[1] = .object(o)
        }
        assertRefused(gt, .bbox, "images[1] repeats the image id 10 of images[0] (image ids must be unique)")
    }
}
