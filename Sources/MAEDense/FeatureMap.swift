// MAEDense: the dense-task heads above the shared backbone.
//   Layers/        conv, transposed conv, channel LayerNorm, BatchNorm, pooling as parameterised layers
//   Backbone/      the ViT as ViTDet and mmseg adapt it, the simple feature pyramid
//   Detection/     boxes, anchors, box coding, matching, sampling, NMS, RoIAlign, RPN, RoI heads, mask head
//   Segmentation/  Feature2Pyramid neck, UperNet, the linear probe head
// Maps are NCHW float32, batch outermost, as the kernels' image ops take them.
import MAEKernels

/// One level of a feature pyramid: a (B, C, H, W) map and its stride in input pixels.
public struct FeatureMap {
    public let tensor: Tensor
    public let stride: Int
    public var batch: Int { tensor.shape[0] }
    public var channels: Int { tensor.shape[1] }
    public var height: Int { tensor.shape[2] }
    public var width: Int { tensor.shape[3] }

    /// Wraps a (B, C, H, W) tensor; `stride` is how many input pixels one map cell spans.
    public init(_ tensor: Tensor, stride: Int) {
        precondition(tensor.shape.count == 4, "a feature map is (B, C, H, W), not \(tensor.shape)")
        precondition(stride > 0, "stride \(stride)")
        self.tensor = tensor
        self.stride = stride
    }

    /// A zero-filled (B, C, H, W) map.
    public init(batch: Int, channels: Int, height: Int, width: Int, stride: Int) {
        self.init(Tensor([batch, channels, height, width]), stride: stride)
    }

    /// The values of image `b`, channel `c`: H * W floats, row-major.
    public func plane(_ b: Int, _ c: Int) -> UnsafeMutablePointer<Float> {
        tensor.data + (b * channels + c) * height * width
    }
}
