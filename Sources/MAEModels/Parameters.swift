import MAEFormats
import MAEKernels

/// One named parameter: its checkpoint key, shape and place in the flat buffers.
public struct ParameterSpec: Sendable {
    public let name: String
    public let shape: [Int]
    /// False for MAE's fixed sin-cos position embeddings (requires_grad=False).
    public let trainable: Bool
    public let offset: Int
    public var count: Int { shape.reduce(1, *) }
}

/// The ordered parameter table that drives allocation, initialisation, optimisers, checkpoint
/// loading and fixture comparison. Names are the official MAE / timm checkpoint keys.
public struct ParameterLayout: Sendable {
    public private(set) var specs: [ParameterSpec] = []
    public private(set) var totalCount = 0
    /// Position in `specs` of each name.
    private var index: [String: Int] = [:]

    public init() {}

    /// Appends a parameter and returns its offset in the flat buffers.
    @discardableResult
    public mutating func add(_ name: String, _ shape: [Int], trainable: Bool = true) -> Int {
        precondition(index[name] == nil, "duplicate parameter \(name)")
        let spec = ParameterSpec(name: name, shape: shape, trainable: trainable, offset: totalCount)
        index[name] = specs.count
        specs.append(spec)
        totalCount += spec.count
        return spec.offset
    }

    /// The offset of parameter `name` in the flat buffers, nil when the layout has no such parameter.
    public func offset(_ name: String) -> Int? { index[name].map { specs[$0].offset } }

    /// Every parameter's name and shape, in layout order (what a checkpoint is checked against).
    public var shapes: [(name: String, shape: [Int])] { specs.map { ($0.name, $0.shape) } }
}

/// Parameter values and their gradients, each one contiguous buffer laid out by a `ParameterLayout`.
public final class ParameterStore {
    public let layout: ParameterLayout
    /// Writers other than `set`, `value` and the optimizers' `step` call `weightsChanged()` after writing.
    public let values: Tensor
    public let grads: Tensor
    /// The weight matrices' packed bf16 copies for `Precision.bf16`, remade after every `weightsChanged()`.
    public let bf16Weights = BF16WeightCache()
    private let index: [String: Int]

    public init(layout: ParameterLayout) {
        self.layout = layout
        values = Tensor([layout.totalCount])
        grads = Tensor([layout.totalCount])
        index = Dictionary(uniqueKeysWithValues: layout.specs.enumerated().map { ($1.name, $0) })
    }

    public var specs: [ParameterSpec] { layout.specs }

    public func spec(_ name: String) -> ParameterSpec? { index[name].map { layout.specs[$0] } }

    /// The values of parameter `name` (a view into the flat buffer). The caller may write through it, so
    /// the bf16 copies are marked stale.
    public func value(_ name: String) -> UnsafeMutableBufferPointer<Float> {
        let s = spec(name)!
        weightsChanged()
        return .init(start: values.data + s.offset, count: s.count)
    }

    /// The values of parameter `name` for reading. Unlike `value`, it leaves the bf16 copies valid:
    /// what forwards and backwards read, so evaluating twice packs the weights once.
    public func read(_ name: String) -> UnsafePointer<Float> { UnsafePointer(values.data + spec(name)!.offset) }

    /// The gradient of parameter `name` (a view into the flat buffer).
    public func grad(_ name: String) -> UnsafeMutableBufferPointer<Float> {
        let s = spec(name)!
        return .init(start: grads.data + s.offset, count: s.count)
    }

    /// Copies `values` into parameter `name`, checking the shape.
    public func set(_ name: String, shape: [Int], _ newValues: [Float]) throws {
        guard let s = spec(name) else { throw ModelError.shapeMismatch("the model has no parameter \(name)") }
        guard s.shape == shape, newValues.count == s.count else {
            // Both real shapes: the values' count too, when it disagrees with the shape given.
            let given = elementCount(shape) == newValues.count ? "\(shape)" : "\(shape) (\(newValues.count) values)"
            throw ModelError.shapeMismatch("\(name) is \(s.shape) in the model but \(given) in the checkpoint")
        }
        newValues.withUnsafeBufferPointer { (values.data + s.offset).update(from: $0.baseAddress!, count: s.count) }
        weightsChanged()
    }

    /// Marks the bf16 copies of the weights stale (`BF16WeightCache`): call after writing `values`.
    public func weightsChanged() { bf16Weights.weightsChanged() }

    public func zeroGrads() { grads.zero() }

    @inline(__always) func v(_ offset: Int) -> UnsafeMutablePointer<Float> { values.data + offset }
    @inline(__always) func g(_ offset: Int) -> UnsafeMutablePointer<Float> { grads.data + offset }
}
