// Glossary for every kernel in this target:
//   B batch, N tokens (cls included), L patches, D width, H heads, Dh = D / H head width,
//   P patch size, C image channels, K classes; in the image ops (conv, pooling, resize) H W / OH OW are
//   input / output height and width, OC output channels, KH KW the kernel. Shapes outermost first, row-major.
// Conventions (as llm.c): outputs first, then inputs, then sizes; a backward *accumulates* into
// the gradients it is given (callers zero them once per step), except where its doc says "writes".

import Foundation

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
        self.data = LargeBuffers.take(max(count, 1)) ?? .allocate(capacity: max(count, 1))
        data.initialize(repeating: 0, count: max(count, 1))
    }

    /// A tensor holding a copy of `values`, which must have `shape.reduce(1, *)` elements.
    public convenience init(_ shape: [Int], _ values: [Float]) {
        self.init(shape)
        precondition(values.count == count, "\(values.count) values for shape \(shape)")
        values.withUnsafeBufferPointer { data.update(from: $0.baseAddress!, count: count) }
    }

    deinit { LargeBuffers.give(data, count: max(count, 1)) }

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

/// Freed tensor buffers of at least 4 MB, kept for the next tensor of the same element count. glibc
/// maps every block over 32 MB afresh and unmaps it on free, so each pass of a model whose layers
/// allocate their outputs (ViTDet's pyramid at 1024 px: ~0.5 GB per forward, 64 MB tensors)
/// page-faulted all of it again, ~4% of the forward. At most `limitBytes` stay idle, the oldest
/// freed first beyond it.
enum LargeBuffers {
    static let minimumCount = 1 << 20
    /// 1 GiB, or a sixteenth of the machine's memory when that is less.
    static let limitBytes = min(1 << 30, Int(sysconf(Int32(_SC_PHYS_PAGES))) * Int(sysconf(Int32(_SC_PAGESIZE))) / 16)
    private static let lock = NSLock()
    /// Idle buffers, oldest first.
    nonisolated(unsafe) private static var idle: [(count: Int, data: UnsafeMutablePointer<Float>)] = []
    nonisolated(unsafe) private static var idleBytes = 0

    /// An idle buffer of exactly `count` floats (uninitialised contents), or nil.
    static func take(_ count: Int) -> UnsafeMutablePointer<Float>? {
        guard count >= minimumCount else { return nil }
        lock.lock(); defer { lock.unlock() }
        guard let i = idle.lastIndex(where: { $0.count == count }) else { return nil }
        idleBytes -= count * 4
        return idle.remove(at: i).data
    }

    /// Keeps `data` (`count` floats) for a later `take`, or frees it when it is small.
    static func give(_ data: UnsafeMutablePointer<Float>, count: Int) {
        guard count >= minimumCount, count * 4 <= limitBytes else { data.deallocate(); return }
        lock.lock()
        idle.append((count, data))
        idleBytes += count * 4
        var evicted: [UnsafeMutablePointer<Float>] = []
        while idleBytes > limitBytes {
            let oldest = idle.removeFirst()
            idleBytes -= oldest.count * 4
            evicted.append(oldest.data)
        }
        lock.unlock()
        for p in evicted { p.deallocate() }
    }
}
