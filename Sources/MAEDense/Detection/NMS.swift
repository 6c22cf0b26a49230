// Non-maximum suppression as torchvision's CPU `nms` / `batched_nms`, which detectron2 calls.

/// The order torchvision's `nms` visits boxes: by score, highest first; equal scores by index
/// (torch's CPU sort is not stable, so detectron2 leaves ties unspecified; here they are fixed).
func scoreOrder(_ scores: [Float], _ indices: [Int]) -> [Int] {
    indices.sorted { scores[$0] > scores[$1] || (scores[$0] == scores[$1] && $0 < $1) }
}

/// torchvision `nms(boxes, scores, threshold)`: greedily keeps the best remaining box and
/// suppresses every later box whose IoU with it is strictly greater than `threshold` (IoU equal to
/// the threshold is kept). IoU here is inter / (area a + area b - inter) without the zero rule, so
/// two empty boxes give NaN and never suppress each other, as in torchvision. Returns kept indices
/// by decreasing score.
public func nonMaximumSuppression(boxes: [Box], scores: [Float], threshold: Float) -> [Int] {
    nonMaximumSuppression(boxes: boxes, scores: scores, threshold: threshold, among: Array(boxes.indices))
}

func nonMaximumSuppression(boxes: [Box], scores: [Float], threshold: Float, among candidates: [Int]) -> [Int] {
    precondition(boxes.count == scores.count, "\(boxes.count) boxes but \(scores.count) scores")
    let order = scoreOrder(scores, candidates)
    var suppressed = [Bool](repeating: false, count: order.count), keep: [Int] = []
    for a in 0..<order.count where !suppressed[a] {
        let i = order[a], bi = boxes[i], areaI = bi.area
        keep.append(i)
        for b in (a + 1)..<order.count where !suppressed[b] {
            let bj = boxes[order[b]]
            let w = max(0, min(bi.x1, bj.x1) - max(bi.x0, bj.x0))
            let h = max(0, min(bi.y1, bj.y1) - max(bi.y0, bj.y0))
            let inter = w * h
            if inter / (areaI + bj.area - inter) > threshold { suppressed[b] = true }
        }
    }
    return keep
}

/// torchvision `batched_nms(boxes, scores, groups, threshold)`: NMS within each group (a class, or
/// a pyramid level for the RPN), boxes of different groups never suppress each other. Returns the
/// kept indices by decreasing score (ties by index). This is torchvision's per-group algorithm;
/// its coordinate-offset variant for small inputs gives the same result up to float rounding.
public func batchedNonMaximumSuppression(boxes: [Box], scores: [Float], groups: [Int], threshold: Float) -> [Int] {
    precondition(boxes.count == groups.count, "\(boxes.count) boxes but \(groups.count) group ids")
    var members: [Int: [Int]] = [:]
    for (i, g) in groups.enumerated() { members[g, default: []].append(i) }
    var keep: [Int] = []
    for g in members.keys.sorted() {
        keep += nonMaximumSuppression(boxes: boxes, scores: scores, threshold: threshold, among: members[g]!)
    }
    return scoreOrder(scores, keep)
}
