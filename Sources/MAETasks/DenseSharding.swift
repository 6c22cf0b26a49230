import Foundation
import MAEDense
import MAEDistributed
import MAEKernels

// Sharded dense evaluation: each rank runs its share of the val images and every rank receives
// every rank's outputs, in rank order, to consume in the one-process order.

/// Every rank's `mine`, in rank order (one process: its own, untouched).
func gatherValues<T: BitwiseCopyable>(_ mine: [T], world: World, _ operation: String) throws -> [[T]] {
    guard world.size > 1 else { return [mine] }
    return try world.allGather(mine.withUnsafeBytes { Array($0) }, operation).map { part in
        part.withUnsafeBytes { Array($0.bindMemory(to: T.self)) }
    }
}

/// One val image's raw detections (in the padded input frame) with what `ROIHeads.postprocess`
/// needs besides: its dataset index and its extent in the input.
struct RawImageDetections {
    var index: Int
    var inputHeight: Int, inputWidth: Int
    var detections: Detections

    /// Appends this image as floats (exact: every count and size is far below 2^24): index, input
    /// height and width, N, mask side S, then per detection x0 y0 x1 y1 score class, then the (N, S, S) masks.
    func encode(into out: inout [Float]) {
        let d = detections, n = d.boxes.count
        let side = d.maskProbabilities.shape.count == 3 ? d.maskProbabilities.shape[1] : 0
        out += [Float(index), Float(inputHeight), Float(inputWidth), Float(n), Float(side)]
        for i in 0..<n {
            let b = d.boxes[i]
            out += [b.x0, b.y0, b.x1, b.y1, d.scores[i], Float(d.classes[i])]
        }
        out += d.maskProbabilities.array.prefix(n * side * side)
    }

    /// The images `encode` appended to `values`, in order.
    static func decode(_ values: [Float]) -> [RawImageDetections] {
        var images: [RawImageDetections] = [], at = 0
        func next() -> Int { defer { at += 1 }; return Int(values[at]) }
        while at < values.count {
            let index = next(), height = next(), width = next(), n = next(), side = next()
            var boxes: [Box] = [], scores: [Float] = [], classes: [Int] = []
            for _ in 0..<n {
                boxes.append(Box(values[at], values[at + 1], values[at + 2], values[at + 3]))
                scores.append(values[at + 4])
                classes.append(Int(values[at + 5]))
                at += 6
            }
            let masks = Tensor([n, side, side], Array(values[at..<(at + n * side * side)]))
            at += n * side * side
            images.append(RawImageDetections(index: index, inputHeight: height, inputWidth: width,
                                             detections: Detections(boxes: boxes, scores: scores, classes: classes,
                                                                    maskProbabilities: masks)))
        }
        return images
    }
}
