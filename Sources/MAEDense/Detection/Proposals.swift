import MAEModels

// detectron2 `find_top_rpn_proposals`: from every level's decoded anchors and objectness logits,
// the proposals the RoI heads see.

/// Boxes with their objectness logits, best first: one image's RPN proposals.
public struct Proposals: Equatable, Sendable {
    public var boxes: [Box]
    public var logits: [Float]
    /// Each proposal's pyramid level (index into the levels given).
    public var levels: [Int]

    public init(boxes: [Box], logits: [Float], levels: [Int]) {
        precondition(boxes.count == logits.count && boxes.count == levels.count, "proposal fields differ in length")
        self.boxes = boxes; self.logits = logits; self.levels = levels
    }

    public var count: Int { boxes.count }
}

/// The settings of `find_top_rpn_proposals`; ViTDet's are `training` and `inference`.
public struct ProposalSelection: Equatable, Sendable {
    /// Highest-logit boxes kept per level before NMS.
    public var preNMSTopK: Int
    /// Proposals kept per image after NMS.
    public var postNMSTopK: Int
    public var nmsThreshold: Float
    /// Boxes with a side <= this (after clipping) are dropped.
    public var minBoxSize: Float

    public init(preNMSTopK: Int, postNMSTopK: Int, nmsThreshold: Float = 0.7, minBoxSize: Float = 0) {
        precondition(preNMSTopK > 0 && postNMSTopK > 0, "proposal top-k must be positive")
        self.preNMSTopK = preNMSTopK; self.postNMSTopK = postNMSTopK
        self.nmsThreshold = nmsThreshold; self.minBoxSize = minBoxSize
    }

    /// detectron2's Mask R-CNN FPN training setting: 2000 per level, 1000 per image.
    public static let training = ProposalSelection(preNMSTopK: 2000, postNMSTopK: 1000)
    /// Its test setting: 1000 per level, 1000 per image.
    public static let inference = ProposalSelection(preNMSTopK: 1000, postNMSTopK: 1000)
}

/// detectron2 `find_top_rpn_proposals` for one image. `boxes[l]` are level l's decoded anchors and
/// `logits[l]` their objectness logits (same order, (y, x, anchor)); `imageHeight`/`imageWidth` the
/// image's size before padding. Per level the `preNMSTopK` highest logits (descending, equal logits
/// by index); then over all levels: non-finite boxes or logits dropped (in training they throw, as
/// detectron2's "Training has diverged"), boxes clipped to the image, boxes with a side <=
/// `minBoxSize` dropped, NMS within each level at `nmsThreshold`, and the first `postNMSTopK` by
/// logit kept. No sigmoid and no small-box threshold, unlike torchvision.
public func selectProposals(boxes: [[Box]], logits: [[Float]], imageHeight: Int, imageWidth: Int,
                            selection: ProposalSelection, training: Bool) throws -> Proposals {
    precondition(boxes.count == logits.count, "\(boxes.count) levels of boxes but \(logits.count) of logits")
    var candidates: [Box] = [], scores: [Float] = [], levels: [Int] = []
    for level in boxes.indices {
        precondition(boxes[level].count == logits[level].count, "level \(level): boxes and logits differ in count")
        let order = topKIndices(logits[level], selection.preNMSTopK)
        for i in order {
            candidates.append(boxes[level][i]); scores.append(logits[level][i]); levels.append(level)
        }
    }
    var kept: [Int] = []
    for i in candidates.indices {
        guard candidates[i].isFinite && scores[i].isFinite else {
            if training { throw NonFiniteError("RPN proposals hold non-finite boxes or logits: training has diverged") }
            continue
        }
        candidates[i] = candidates[i].clipped(height: imageHeight, width: imageWidth)
        if candidates[i].isNonEmpty(threshold: selection.minBoxSize) { kept.append(i) }
    }
    let survivors = Proposals(boxes: kept.map { candidates[$0] }, logits: kept.map { scores[$0] },
                              levels: kept.map { levels[$0] })
    let keep = batchedNonMaximumSuppression(boxes: survivors.boxes, scores: survivors.logits,
                                            groups: survivors.levels, threshold: selection.nmsThreshold)
        .prefix(selection.postNMSTopK)
    return Proposals(boxes: keep.map { survivors.boxes[$0] }, logits: keep.map { survivors.logits[$0] },
                     levels: keep.map { survivors.levels[$0] })
}

/// Indices of the k largest values, largest first, equal values by index (torch's `topk`, sorted).
public func topKIndices(_ values: [Float], _ k: Int) -> [Int] {
    let indices = Array(values.indices)
    guard k < values.count else { return scoreOrder(values, indices) }
    // A bounded selection: sort a first chunk, then admit only values above the current k-th.
    var best = scoreOrder(values, Array(indices.prefix(k)))
    var threshold = values[best[k - 1]]
    var pending: [Int] = []
    for i in k..<values.count where values[i] > threshold {
        pending.append(i)
        if pending.count >= k {
            best = Array(scoreOrder(values, best + pending).prefix(k))
            threshold = values[best[k - 1]]
            pending.removeAll(keepingCapacity: true)
        }
    }
    return Array(scoreOrder(values, best + pending).prefix(k))
}
