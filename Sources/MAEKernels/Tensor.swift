// Glossary for every kernel in this target:
//   B batch, N tokens (cls included), L patches, D width, H heads, Dh = D / H head width,
//   P patch size, C image channels, K classes; in the image ops (conv, pooling, resize) H W / OH OW are
//   input / output height and width, OC output channels, KH KW the kernel. Shapes outermost first, row-major.
// Conventions (as llm.c): outputs first, then inputs, then sizes; a backward *accumulates* into
// the gradients it is given (callers zero them once per step), except where its doc says "writes".

/// A contiguous float32 buffer with a shape. Reference semantics: kernels write through `data`.
public final class Tensor {
    public let shape: [Int]
    public let count: Int
    public let data: UnsafeMutablePointer<Float>

    /// A zero-filled tensor.
    public init(_ shape: [Int]) {
        precondition(shape.allSatisfy { $0 >= 0 }, "negative dimension in \(shape)")
        self.shape = shape
        self.count = shape.reduce(1, *)
        self.data = .allocate(capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    /// A tensor holding a copy of `values`, which must have `shape.reduce(1, *)` elements.
    public convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { data.deallocate() }

    public var buffer: UnsafeMutableBufferPointer<Float> { .init(start: data, count: count) }
    public var array: [Float] { Array(buffer) }

    public subscript(i: Int) -> Float {
        get { data[i] }
        set { data[i] = newValue }
    }

    public func zero() { data.update(repeating: 0, count: count) }

    public func copy(from other: Tensor) {
        precondition(other.count == count, "copy of \(other.shape) into \(shape)")
        data.update(from: other.data, count: count)
    }

    public func clone() -> Tensor {
        let t = Tensor(shape)
        t.copy(from: self)
        return t
    }
}
