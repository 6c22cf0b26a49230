import Foundation
import XCTest

/// mmseg's predictions for an MAE UperNet whose BEiT extras are trained (see SegmentReferenceTests).
extension SegmentReferenceTests {
    /// A fine-tuned mmseg MAE UperNet holds trained layer scales (gamma_1 / gamma_2) and relative
    /// position bias tables; issue 15 has them as options of the backbone.
    func testTrainedLayerScaleAndRelativePositionBiasMatchMMSeg() throws {
        for (run, folder, slide) in [("whole32", "square", false), ("slide32", "wide", true)] {
            try checkEvalOnly(weights: "mmseg_upernet_tiny_extras.safetensors", variant: "mmseg_upernet_tiny_extras",
                              run: run, folder: folder, size: 32, slide: slide)
        }
    }
}
