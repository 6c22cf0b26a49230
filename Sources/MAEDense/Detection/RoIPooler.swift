import Foundation
import MAEKernels

// detectron2 `ROIPooler` with "ROIAlignV2": boxes pooled from the pyramid level their size selects.

/// detectron2's `ROIPooler(output_size, scales, sampling_ratio, "ROIAlignV2", 224, 4)` over a
/// pyramid whose strides are consecutive powers of two (p2..p5: 4, 8, 16, 32).
public struct RoIPooler: Equatable, Sendable {
    public let outputSize: Int
    public let strides: [Int]
    public let samplingRatio: Int
    public let canonicalBoxSize: Float
    public let canonicalLevel: Int

    public init(outputSize: Int, strides: [Int], samplingRatio: Int = 0, canonicalBoxSize: Float = 224,
                canonicalLevel: Int = 4) {
        precondition(outputSize > 0 && !strides.isEmpty, "RoI pooler of \(outputSize) over strides \(strides)")
        precondition(strides.allSatisfy { $0 > 0 && $0 & ($0 - 1) == 0 }, "Featuremap stride is not power of 2: \(strides)")
        precondition(zip(strides, strides.dropFirst()).allSatisfy { $1 == 2 * $0 },
                     "RoI pooler strides \(strides) do not form a pyramid")
        self.outputSize = outputSize; self.strides = strides; self.samplingRatio = samplingRatio
        self.canonicalBoxSize = canonicalBoxSize; self.canonicalLevel = canonicalLevel
    }

    /// log2 of the first level's stride (2 for p2).
    public var minLevel: Int { strides[0].trailingZeroBitCount }
    public var maxLevel: Int { minLevel + strides.count - 1 }

    /// `assign_boxes_to_levels`: floor(4 + log2(sqrt(area) / 224 + 1e-8)) in float32, clamped to
    /// the levels present, as an index into `strides`.
    public func level(of box: Box) -> Int {
        let size = box.area.squareRoot()
        let raw = (Float(canonicalLevel) + log2f(size / canonicalBoxSize + 1e-8)).rounded(.down)
        let clamped = raw.isNaN ? Float(minLevel) : min(max(raw, Float(minLevel)), Float(maxLevel))
        return Int(clamped) - minLevel
    }

    /// What `forward` pooled, for `backward`: the rois (R,5) and each one's level.
    public struct Context {
        public let rois: [Float]
        public let levels: [Int]
    }

    /// Pools every box of every image (boxes[b] in image b's input pixels) from its level: returns
    /// (R, C, S, S) with R = all boxes, image 0's first, and the context for `backward`.
    public func forward(features: [FeatureMap], boxes: [[Box]]) -> (Tensor, Context) {
        precondition(features.count == strides.count && zip(features, strides).allSatisfy { $0.stride == $1 },
                     "RoI pooler for strides \(strides) got maps of strides \(features.map(\.stride))")
        precondition(boxes.count == features[0].batch, "\(boxes.count) box lists for a batch of \(features[0].batch)")
        var rois: [Float] = [], levels: [Int] = []
        for (b, list) in boxes.enumerated() {
            for box in list { rois += [Float(b), box.x0, box.y0, box.x1, box.y1]; levels.append(level(of: box)) }
        }
        let out = Tensor([levels.count, features[0].channels, outputSize, outputSize])
        let perRoi = features[0].channels * outputSize * outputSize
        forEachLevel(levels, rois) { level, members, levelRois in
            let pooled = Tensor([members.count, features[0].channels, outputSize, outputSize])
            levelRois.withUnsafeBufferPointer {
                roiAlignForward(out: pooled.data, input: features[level].tensor.data, rois: $0.baseAddress!,
                                roiCount: members.count, size: alignSize(features[level]))
            }
            for (k, r) in members.enumerated() { (out.data + r * perRoi).update(from: pooled.data + k * perRoi, count: perRoi) }
        }
        return (out, Context(rois: rois, levels: levels))
    }

    /// dFeatures[l] (B,C,H,W) per level, dOut (R,C,S,S). Accumulates into the level gradients.
    public func backward(dFeatures: [FeatureMap], dOut: Tensor, context: Context) {
        let perRoi = dFeatures[0].channels * outputSize * outputSize
        forEachLevel(context.levels, context.rois) { level, members, levelRois in
            let g = Tensor([members.count, dFeatures[0].channels, outputSize, outputSize])
            for (k, r) in members.enumerated() { (g.data + k * perRoi).update(from: dOut.data + r * perRoi, count: perRoi) }
            levelRois.withUnsafeBufferPointer {
                roiAlignBackward(dInput: dFeatures[level].tensor.data, dOut: g.data, rois: $0.baseAddress!,
                                 roiCount: members.count, size: alignSize(dFeatures[level]))
            }
        }
    }

    func alignSize(_ map: FeatureMap) -> RoIAlignSize {
        RoIAlignSize(batch: map.batch, channels: map.channels, height: map.height, width: map.width,
                     pooledHeight: outputSize, pooledWidth: outputSize, spatialScale: 1 / Float(map.stride),
                     samplingRatio: samplingRatio, aligned: true)
    }

    /// Calls `body(level, roi indices, their (k,5) rois)` for each level that has rois.
    private func forEachLevel(_ levels: [Int], _ rois: [Float], _ body: (Int, [Int], [Float]) -> Void) {
        for level in strides.indices {
            let members = levels.indices.filter { levels[$0] == level }
            guard !members.isEmpty else { continue }
            body(level, members, members.flatMap { rois[(5 * $0)..<(5 * $0 + 5)] })
        }
    }
}
