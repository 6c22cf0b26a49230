// COCO detection and instance-segmentation AP, equal to pycocotools' COCOeval (bbox and segm).
//
// Glossary of the result shapes, as in cocoeval.py: T = 10 IoU thresholds, R = 101 recall thresholds,
// K categories, A = 4 area ranges (all, small, medium, large), M = 3 maxDets (1, 10, 100).
import Foundation
import MAECOCO
import MAEJSON

/// What the IoU between a detection and a ground truth is computed on.
public enum COCOIoUType: String, CaseIterable, Sendable {
    /// Boxes [x, y, w, h].
    case bbox
    /// Masks (RLE, polygons rasterised at the image size).
    case segm
}

/// The evaluation parameters of COCOeval's `Params.setDetParams`.
public struct COCOEvalParams: Sendable {
    /// `np.linspace(.5, .95, 10)`, reproduced bit for bit.
    public var iouThresholds = linspace(0.5, 0.95, 10)
    /// `np.linspace(0, 1, 101)`.
    public var recallThresholds = linspace(0.0, 1.0, 101)
    public var maxDets = [1, 10, 100]
    /// Inclusive area ranges [lo, hi] in pixels.
    public var areaRanges: [(lo: Double, hi: Double)] = [(0, 1e10), (0, 1024), (1024, 9216), (9216, 1e10)]
    public var areaLabels = ["all", "small", "medium", "large"]

    public init() {}
}

/// Why a ground-truth polygon list cannot be rasterised as pycocotools would, or nil. pycocotools
/// raises on an empty list or a first polygon of fewer than 4 numbers, reads a list of 4-number
/// entries as boxes, and rasterises anything else; a polygon of fewer than 3 points (6 numbers) or
/// with an odd count is refused here rather than guessed at.
func polygonProblem(_ polygons: [[Double]]) -> String? {
    guard !polygons.isEmpty else { return "has an empty polygon list" }
    if polygons.allSatisfy({ $0.count == 4 }) { return nil }
    guard let bad = polygons.first(where: { $0.count < 6 || $0.count % 2 != 0 }) else { return nil }
    return "has a polygon of \(bad.count) numbers (a polygon is x, y pairs of at least 3 points: an even count of 6 or more)"
}

/// numpy's linspace with endpoint: start + i * step, the last value set to stop.
func linspace(_ start: Double, _ stop: Double, _ num: Int) -> [Double] {
    let step = (stop - start) / Double(num - 1)
    var values = (0..<num).map { Double($0) * step + start }
    values[num - 1] = stop
    return values
}

/// The accumulated precision and recall tables and the 12 summary numbers.
public struct COCOEvalResult: Sendable {
    public var iouType: COCOIoUType
    /// Precision [T][R][K][A][M], flattened row-major; -1 where a category/area has no ground truth.
    public var precision: [Double]
    /// Recall [T][K][A][M], flattened row-major; -1 where a category/area has no ground truth.
    public var recall: [Double]
    /// The category ids along K (sorted).
    public var categoryIds: [Int]
    /// AP, AP50, AP75, AP small/medium/large, AR@1, AR@10, AR@100, AR small/medium/large.
    public var stats: [Double]
    /// The 12 lines pycocotools' `summarize()` prints, without trailing newlines.
    public var summaryLines: [String]
}

/// COCOeval for bbox and segm: same matching (per image and category, greedy by score, crowd regions
/// matched without being counted), same accumulation (101-point interpolated precision) and summary.
public struct COCOEvaluator {
    public let iouType: COCOIoUType
    public let params: COCOEvalParams
    let imageIds: [Int]
    let categoryIds: [Int]
    let gts: [EvalObject]
    let dts: [EvalObject]
    /// Object indices grouped by (category index k, image index i) at `k * I + i`: CSR offsets + items,
    /// each group in file order.
    let gtGroups: (offsets: [Int], items: [Int])
    let dtGroups: (offsets: [Int], items: [Int])

    /// Prepares ground truth and detections as COCO.loadRes and COCOeval._prepare do.
    ///
    /// Detections are read the way loadRes reads them: if the first has a box, all areas are box areas
    /// (w * h) and a detection without a mask gets its box as a polygon; otherwise areas and missing
    /// boxes come from the masks. Ids are 1...n in file order.
    /// - Throws: `PathError` naming `detectionsFile` if a detection refers to an image that is not in
    ///   the ground truth, or lacks what the evaluation needs.
    public init(groundTruth: COCODataset, detections: [COCODetection], iouType: COCOIoUType,
                params: COCOEvalParams = COCOEvalParams(),
                groundTruthFile: String = "ground truth", detectionsFile: String = "detections") throws {
        self.iouType = iouType
        self.params = params
        imageIds = Array(Set(groundTruth.images.map(\.id))).sorted()
        categoryIds = Array(Set(groundTruth.categories.map(\.id))).sorted()
        let sizes = Dictionary(groundTruth.images.map { ($0.id, ($0.height, $0.width)) },
                               uniquingKeysWith: { a, _ in a })
        let imageIndex = Dictionary(uniqueKeysWithValues: imageIds.enumerated().map { ($1, $0) })
        let categoryIndex = Dictionary(uniqueKeysWithValues: categoryIds.enumerated().map { ($1, $0) })

        // pycocotools keys annotations by id and keeps the last of a repeated one (twice), so its AP
        // would differ from an evaluation of the file as written: refuse instead.
        var firstIndex: [Int: Int] = [:]
        for (n, a) in groundTruth.annotations.enumerated() {
            if let m = firstIndex[a.id] {
                throw PathError(groundTruthFile, "annotation id \(a.id) appears twice (annotations[\(m)] and " +
                                "annotations[\(n)]); pycocotools would evaluate the last one twice and drop the other")
            }
            firstIndex[a.id] = n
        }
        var gts: [EvalObject] = []
        var gtKeys: [Int] = []
        gts.reserveCapacity(groundTruth.annotations.count)
        for (n, a) in groundTruth.annotations.enumerated() {
            guard let i = imageIndex[a.imageId], let k = categoryIndex[a.categoryId] else { continue }
            var mask: RLE? = nil
            if iouType == .segm {
                guard let s = a.segmentation, let (h, w) = sizes[a.imageId] else {
                    throw PathError(groundTruthFile,
                                    "annotations[\(n)] (id \(a.id)) has no segmentation, which segm evaluation needs")
                }
                if case .polygons(let polygons) = s, let problem = polygonProblem(polygons) {
                    throw PathError(groundTruthFile, "annotations[\(n)] (id \(a.id)) \(problem)")
                }
                mask = s.rle(imageHeight: h, imageWidth: w)
            }
            gts.append(EvalObject(id: a.id, box: a.bbox, area: a.area, score: 0, isCrowd: a.isCrowd, mask: mask))
            gtKeys.append(k * imageIds.count + i)
        }

        var dts: [EvalObject] = []
        var dtKeys: [Int] = []
        dts.reserveCapacity(detections.count)
        let boxMode = detections.first?.bbox != nil
        for (n, d) in detections.enumerated() {
            guard let i = imageIndex[d.imageId], let (h, w) = sizes[d.imageId] else {
                throw PathError(detectionsFile,
                                "detection \(n) refers to image id \(d.imageId), which is not in \(groundTruthFile)")
            }
            guard let k = categoryIndex[d.categoryId] else { continue }  // as _prepare: other categories are dropped
            let box: [Double], area: Double
            var mask: RLE? = nil
            if boxMode {
                guard let b = d.bbox else {
                    throw PathError(detectionsFile, "detection \(n) has no bbox while the first one has")
                }
                box = b
                area = b[2] * b[3]
                if iouType == .segm {
                    let x1 = b[0], x2 = b[0] + b[2], y1 = b[1], y2 = b[1] + b[3]
                    let s = d.segmentation ?? .polygons([[x1, y1, x1, y2, x2, y2, x2, y1]])
                    mask = s.rle(imageHeight: h, imageWidth: w)
                }
            } else {
                guard let s = d.segmentation else {
                    throw PathError(detectionsFile,
                                    "detection \(n) has no segmentation while the first one has no bbox")
                }
                let rle = s.rle(imageHeight: h, imageWidth: w)
                area = Double(rle.area)
                box = d.bbox ?? rle.boundingBox
                if iouType == .segm { mask = rle }
            }
            dts.append(EvalObject(id: n + 1, box: box, area: area, score: d.score, isCrowd: false, mask: mask))
            dtKeys.append(k * imageIds.count + i)
        }
        self.gts = gts
        self.dts = dts
        let groups = categoryIds.count * imageIds.count
        gtGroups = groupIndices(keys: gtKeys, groups: groups)
        dtGroups = groupIndices(keys: dtKeys, groups: groups)
    }

    /// Reads both files and evaluates: the whole of `mae-eval coco-eval`. Ground-truth annotations
    /// must have what COCOeval reads without a default: `area`, `iscrowd`, and `bbox` for boxes.
    public static func evaluateFiles(groundTruth: URL, detections: URL, iouType: COCOIoUType) throws -> COCOEvalResult {
        let gt = try COCODataset(contentsOf: groundTruth,
                                 requiredAnnotationFields: iouType == .bbox ? ["bbox", "area", "iscrowd"] : ["area", "iscrowd"])
        let dt = try COCODetection.load(contentsOf: detections)
        let evaluator = try COCOEvaluator(groundTruth: gt, detections: dt, iouType: iouType,
                                          groundTruthFile: groundTruth.path, detectionsFile: detections.path)
        return evaluator.run()
    }

    /// evaluate + accumulate + summarize.
    public func run() -> COCOEvalResult {
        let (precision, recall) = evaluateAndAccumulate()
        let (stats, lines) = summarize(precision: precision, recall: recall)
        return COCOEvalResult(iouType: iouType, precision: precision, recall: recall, categoryIds: categoryIds,
                              stats: stats, summaryLines: lines)
    }

    // MARK: - evaluate + accumulate

    /// COCOeval.evaluate and COCOeval.accumulate, one category at a time (categories in parallel):
    /// returns precision [T][R][K][A][M] and recall [T][K][A][M].
    public func evaluateAndAccumulate() -> (precision: [Double], recall: [Double]) {
        let T = params.iouThresholds.count, R = params.recallThresholds.count, K = categoryIds.count
        let A = params.areaRanges.count, M = params.maxDets.count
        var precision = [Double](repeating: -1, count: T * R * K * A * M)
        var recall = [Double](repeating: -1, count: T * K * A * M)
        precision.withUnsafeMutableBufferPointer { p in
            recall.withUnsafeMutableBufferPointer { r in
                let pBase = p.baseAddress!, rBase = r.baseAddress!
                // Each category writes only its own k slots.
                DispatchQueue.concurrentPerform(iterations: K) { k in
                    let buffers = evaluateCategory(k)
                    for a in 0..<A {
                        for m in 0..<M {
                            accumulate(buffers[a], maxDet: params.maxDets[m]) { t, q, rc in
                                rBase[((t * K + k) * A + a) * M + m] = rc
                                for ri in 0..<R { pBase[(((t * R + ri) * K + k) * A + a) * M + m] = q[ri] }
                            }
                        }
                    }
                }
            }
        }
        return (precision, recall)
    }

    /// Per-image results of one category and area range, concatenated over images in image order.
    struct AreaBuffer {
        var scores: [Double] = []
        /// Position of each detection in its image's score order (to apply maxDet).
        var rank: [Int32] = []
        /// [N][T]: matched to a (non-zero id) ground truth / ignored, per IoU threshold.
        var matched: [Bool] = []
        var ignored: [Bool] = []
        /// Ground truths not ignored, summed over images.
        var nonIgnoredGT = 0
    }

    /// COCOeval.computeIoU + evaluateImg for every image of category index k, for every area range.
    func evaluateCategory(_ k: Int) -> [AreaBuffer] {
        let T = params.iouThresholds.count
        let maxDet = params.maxDets.max() ?? 100
        var buffers = [AreaBuffer](repeating: AreaBuffer(), count: params.areaRanges.count)
        for i in imageIds.indices {
            let key = k * imageIds.count + i
            let gtIdx = Array(gtGroups.items[gtGroups.offsets[key]..<gtGroups.offsets[key + 1]])
            var dtIdx = Array(dtGroups.items[dtGroups.offsets[key]..<dtGroups.offsets[key + 1]])
            if gtIdx.isEmpty && dtIdx.isEmpty { continue }
            dtIdx = stableSortByScore(dtIdx)
            if dtIdx.count > maxDet { dtIdx.removeLast(dtIdx.count - maxDet) }
            let G = gtIdx.count, D = dtIdx.count
            let ious = computeIoU(dt: dtIdx, gt: gtIdx)  // [D][G], original gt order

            for (a, range) in params.areaRanges.enumerated() {
                // Ground truths ignored (crowd or outside the area range) go last, stably.
                let ignore = gtIdx.map { gts[$0].isCrowd || gts[$0].area < range.lo || gts[$0].area > range.hi }
                let order = gtIdx.indices.filter { !ignore[$0] } + gtIdx.indices.filter { ignore[$0] }
                let gtIg = order.map { ignore[$0] }
                let crowd = order.map { gts[gtIdx[$0]].isCrowd }
                let gtId = order.map { gts[gtIdx[$0]].id }
                var matched = [Bool](repeating: false, count: T * D)
                var ignored = [Bool](repeating: false, count: T * D)
                if !ious.isEmpty {
                    for (t, threshold) in params.iouThresholds.enumerated() {
                        var gtTaken = [Bool](repeating: false, count: G)
                        for d in 0..<D {
                            var best = min(threshold, 1 - 1e-10)
                            var m = -1
                            for g in 0..<G {
                                if gtTaken[g] && !crowd[g] { continue }
                                if m > -1 && !gtIg[m] && gtIg[g] { break }
                                let iou = ious[d * G + order[g]]
                                if iou < best { continue }
                                best = iou
                                m = g
                            }
                            if m == -1 { continue }
                            ignored[d * T + t] = gtIg[m]
                            // pycocotools stores the gt id and tests it against 0.
                            matched[d * T + t] = gtId[m] != 0
                            gtTaken[m] = true
                        }
                    }
                }
                for d in 0..<D {
                    let area = dts[dtIdx[d]].area
                    let outside = area < range.lo || area > range.hi
                    for t in 0..<T where outside && !matched[d * T + t] { ignored[d * T + t] = true }
                }
                buffers[a].scores += dtIdx.map { dts[$0].score }
                buffers[a].rank += (0..<D).map { Int32($0) }
                buffers[a].matched += matched
                buffers[a].ignored += ignored
                buffers[a].nonIgnoredGT += gtIg.filter { !$0 }.count
            }
        }
        return buffers
    }

    /// Detection indices sorted by descending score, ties in their given order (numpy mergesort).
    func stableSortByScore(_ idx: [Int]) -> [Int] {
        idx.enumerated().sorted { a, b in
            let sa = dts[a.element].score, sb = dts[b.element].score
            return sa != sb ? sa > sb : a.offset < b.offset
        }.map(\.element)
    }

    /// IoU [D][G] flattened (maskUtils.iou with the gt crowd flags); empty when D or G is 0.
    func computeIoU(dt: [Int], gt: [Int]) -> [Double] {
        if dt.isEmpty || gt.isEmpty { return [] }
        let crowd = gt.map { gts[$0].isCrowd }
        let matrix: [[Double]]
        switch iouType {
        case .bbox:
            matrix = RLE.boxIoU(dt.map { dts[$0].box }, gt.map { gts[$0].box }, isCrowd: crowd)
        case .segm:
            matrix = RLE.iou(dt.map { dts[$0].mask! }, gt.map { gts[$0].mask! }, isCrowd: crowd)
        }
        return matrix.flatMap { $0 }
    }

    /// COCOeval.accumulate for one (category, area range, maxDet): reports, per IoU threshold t, the
    /// 101 interpolated precisions and the final recall.
    func accumulate(_ e: AreaBuffer, maxDet: Int, store: (Int, [Double], Double) -> Void) {
        let npig = e.nonIgnoredGT
        if npig == 0 { return }
        let T = params.iouThresholds.count, R = params.recallThresholds.count
        // Detections within maxDet of their image, in image order, then stably by descending score.
        var selected = e.scores.indices.filter { Int(e.rank[$0]) < maxDet }
        selected = selected.enumerated().sorted { a, b in
            let sa = e.scores[a.element], sb = e.scores[b.element]
            return sa != sb ? sa > sb : a.offset < b.offset
        }.map(\.element)
        let nd = selected.count
        var rc = [Double](repeating: 0, count: nd), pr = [Double](repeating: 0, count: nd)
        for t in 0..<T {
            var tp = 0, fp = 0
            for (j, n) in selected.enumerated() {
                if !e.ignored[n * T + t] {
                    if e.matched[n * T + t] { tp += 1 } else { fp += 1 }
                }
                rc[j] = Double(tp) / Double(npig)
                pr[j] = Double(tp) / (Double(fp + tp) + 2.220446049250313e-16)  // np.spacing(1)
            }
            var j = nd - 1
            while j > 0 {
                if pr[j] > pr[j - 1] { pr[j - 1] = pr[j] }
                j -= 1
            }
            // q[r] = pr[searchsorted(rc, recThrs[r], side='left')], 0 once that runs past the end.
            var q = [Double](repeating: 0, count: R)
            var pos = 0
            for (r, threshold) in params.recallThresholds.enumerated() {
                while pos < nd && rc[pos] < threshold { pos += 1 }
                if pos >= nd { break }
                q[r] = pr[pos]
            }
            store(t, q, nd > 0 ? rc[nd - 1] : 0)
        }
    }

    // MARK: - summarize

    /// COCOeval.summarize for bbox/segm: the 12 stats and the lines it prints.
    public func summarize(precision: [Double], recall: [Double]) -> (stats: [Double], lines: [String]) {
        let last = params.maxDets.count - 1
        let specs: [(ap: Bool, iou: Double?, area: String, maxDetIndex: Int)] = [
            (true, nil, "all", last), (true, 0.5, "all", last), (true, 0.75, "all", last),
            (true, nil, "small", last), (true, nil, "medium", last), (true, nil, "large", last),
            (false, nil, "all", 0), (false, nil, "all", min(1, last)), (false, nil, "all", last),
            (false, nil, "small", last), (false, nil, "medium", last), (false, nil, "large", last),
        ]
        var stats: [Double] = [], lines: [String] = []
        for spec in specs {
            let value = summaryValue(precision: precision, recall: recall, ap: spec.ap, iou: spec.iou,
                                     area: spec.area, maxDetIndex: spec.maxDetIndex)
            stats.append(value)
            let iouString = spec.iou.map { String(format: "%0.2f", $0) } ?? String(
                format: "%0.2f:%0.2f", params.iouThresholds.first ?? 0, params.iouThresholds.last ?? 0)
            let title = spec.ap ? "Average Precision" : "Average Recall"
            lines.append(" " + title.padding(toLength: 18, withPad: " ", startingAt: 0)
                         + " " + (spec.ap ? "(AP)" : "(AR)")
                         + " @[ IoU=" + iouString.padding(toLength: max(9, iouString.count), withPad: " ", startingAt: 0)
                         + " | area=" + String(repeating: " ", count: max(0, 6 - spec.area.count)) + spec.area
                         + " | maxDets=" + String(format: "%3d", params.maxDets[spec.maxDetIndex])
                         + " ] = " + String(format: "%0.3f", value))
        }
        return (stats, lines)
    }

    /// Mean of the entries > -1 of one slice of precision or recall (numpy's `np.mean(s[s > -1])`), -1 if none.
    func summaryValue(precision: [Double], recall: [Double], ap: Bool, iou: Double?, area: String,
                      maxDetIndex m: Int) -> Double {
        let T = params.iouThresholds.count, R = params.recallThresholds.count, K = categoryIds.count
        let A = params.areaRanges.count, M = params.maxDets.count
        guard let a = params.areaLabels.firstIndex(of: area) else { return -1 }
        let ts = iou.map { v in params.iouThresholds.indices.filter { params.iouThresholds[$0] == v } }
            ?? Array(0..<T)
        var values: [Double] = []
        for t in ts {
            if ap {
                for r in 0..<R {
                    for k in 0..<K { values.append(precision[(((t * R + r) * K + k) * A + a) * M + m]) }
                }
            } else {
                for k in 0..<K { values.append(recall[((t * K + k) * A + a) * M + m]) }
            }
        }
        let kept = values.filter { $0 > -1 }
        return kept.isEmpty ? -1 : pairwiseSum(kept[...]) / Double(kept.count)
    }
}

/// One ground truth or detection as the evaluation sees it.
struct EvalObject {
    var id: Int
    /// [x, y, w, h]
    var box: [Double]
    var area: Double
    var score: Double
    var isCrowd: Bool
    var mask: RLE?
}

/// Stable counting sort of indices 0..<keys.count by key: CSR offsets [groups + 1] and items.
func groupIndices(keys: [Int], groups: Int) -> (offsets: [Int], items: [Int]) {
    var offsets = [Int](repeating: 0, count: groups + 1)
    for key in keys { offsets[key + 1] += 1 }
    for g in 0..<groups { offsets[g + 1] += offsets[g] }
    var next = offsets
    var items = [Int](repeating: 0, count: keys.count)
    for (n, key) in keys.enumerated() {
        items[next[key]] = n
        next[key] += 1
    }
    return (offsets, items)
}

/// numpy's pairwise summation (8-way unrolled blocks of up to 128), so means match `np.mean` bit for bit.
func pairwiseSum(_ a: ArraySlice<Double>) -> Double {
    let n = a.count, s = a.startIndex
    if n < 8 {
        var res = 0.0
        for i in 0..<n { res += a[s + i] }
        return res
    } else if n <= 128 {
        var r = (0..<8).map { a[s + $0] }
        var i = 8
        while i < n - (n % 8) {
            for j in 0..<8 { r[j] += a[s + i + j] }
            i += 8
        }
        var res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n {
            res += a[s + i]
            i += 1
        }
        return res
    } else {
        var n2 = n / 2
        n2 -= n2 % 8
        return pairwiseSum(a[s..<(s + n2)]) + pairwiseSum(a[(s + n2)...])
    }
}

extension COCOEvalResult {
    /// `{"iou_type": "bbox" | "segm", "stats": [12 numbers]}`, what `coco-eval --out` writes.
    public func jsonValue() -> JSONValue {
        .object(["iou_type": .string(iouType.rawValue), "stats": .array(stats.map { .double($0) })])
    }
}
