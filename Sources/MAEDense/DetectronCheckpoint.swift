import Foundation
import MAEFormats
import MAEJSON
import MAEModels

/// A detector checkpoint in detectron2's parameter names (`backbone.net.*`, `backbone.simfp_*`,
/// `proposal_generator.rpn_head.*`, `roi_heads.*`), as safetensors, a `torch.save` state dict
/// (`{"model": ...}` or bare) or a detectron2 model-zoo `.pkl`; the detectors `detect` trains are
/// saved the same way.
public enum DetectronCheckpoint {
    /// Copies every parameter (and buffer) of `store` from `file`, converting to float32. Refuses a
    /// load that would leave any of them at its initial value or with the wrong shape, naming them;
    /// keys the model does not have are reported, not refused (detectron2 files may carry extras).
    @discardableResult
    public static func load(_ file: CheckpointFile, into store: ParameterStore) throws -> KeyReport {
        let report = KeyReport(expected: store.layout.shapes, provided: file.tensors)
        guard report.isComplete else {
            let problems = report.lines.dropFirst().joined(separator: "; ")
            throw PathError(file.source, "does not hold this detector in detectron2's names (\(problems))")
        }
        for spec in store.specs {
            guard let t = file.tensors[spec.name], t.dtype.isFloatingPoint || spec.name.hasSuffix("num_batches_tracked") else {
                throw PathError(file.source, "holds \(spec.name) as \(file.tensors[spec.name]?.dtype.rawValue ?? "nothing"), not floats")
            }
            try store.set(spec.name, shape: spec.shape, t.floats)
        }
        return report
    }

    /// The store's values under their (detectron2) names, in layout order, with `metadata`.
    public static func safetensors(_ store: ParameterStore, metadata: [String: String]) -> SafeTensors {
        SafeTensors(tensors: store.specs.map { ($0.name, StoredTensor(shape: $0.shape, floats: Array(store.value($0.name)))) },
                    metadata: metadata)
    }
}

extension ROIHeadConfig {
    /// The heads' sizes from a detectron2 checkpoint's shapes: classes from the box predictor
    /// (`cls_score` K+1 rows, `bbox_pred` 4K class-specific), the conv counts and widths of the box and
    /// mask heads, the FC width, the box pooler side from the FC's input. The mask pooler side is not in
    /// the weights: it stays `maskPooled`.
    public static func inferred(from shapes: [String: [Int]], source: String, maskPooled: Int = 14) throws -> ROIHeadConfig {
        func shape(_ name: String, rank: Int) throws -> [Int] {
            guard let s = shapes[name] else { throw PathError(source, "has no \(name), so it is not a detectron2 Mask R-CNN") }
            guard s.count == rank else { throw PathError(source, "has \(name) of shape \(s), expected \(rank) dimensions") }
            return s
        }
        let cls = try shape("roi_heads.box_predictor.cls_score.weight", rank: 2)
        let box = try shape("roi_heads.box_predictor.bbox_pred.weight", rank: 2)
        let classes = cls[0] - 1
        guard classes >= 1 else { throw PathError(source, "has a box predictor for \(cls[0]) scores, so no foreground class") }
        guard box[0] == 4 * classes, box[1] == cls[1] else {
            throw PathError(source, "has roi_heads.box_predictor.bbox_pred of shape \(box), not the class-specific " +
                              "[\(4 * classes), \(cls[1])] detectron2's Mask R-CNN uses")
        }
        let boxConvs = (1...).prefix { shapes["roi_heads.box_head.conv\($0).weight"] != nil }.count
        let maskConvs = (1...).prefix { shapes["roi_heads.mask_head.mask_fcn\($0).weight"] != nil }.count
        let conv1 = try shape(boxConvs > 0 ? "roi_heads.box_head.conv1.weight" : "roi_heads.mask_head.mask_fcn1.weight", rank: 4)
        let fc = try shape("roi_heads.box_head.fc1.weight", rank: 2)
        let fcChannels = boxConvs > 0 ? conv1[0] : conv1[1]
        let side = Int(Double(fc[1] / max(fcChannels, 1)).squareRoot().rounded())
        guard side * side * fcChannels == fc[1] else {
            throw PathError(source, "has roi_heads.box_head.fc1 of shape \(fc), which is no square pooled map of \(fcChannels) channels")
        }
        let predictor = try shape("roi_heads.mask_head.predictor.weight", rank: 4)
        guard predictor[0] == classes else {
            throw PathError(source, "has a mask predictor for \(predictor[0]) classes but a box predictor for \(classes)")
        }
        return ROIHeadConfig(classes: classes, inChannels: conv1[1], boxPooled: side, maskPooled: maskPooled, boxConvs: boxConvs,
                             convDim: conv1[0], fcDim: fc[0], maskConvs: maskConvs)
    }
}
