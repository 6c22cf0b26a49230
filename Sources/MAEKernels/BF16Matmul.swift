import CAVX512
import CDNNL
import Foundation

/// The arithmetic of a run's matrix products.
/// - `fp32`: float32 throughout, OpenBLAS sgemm (the default).
/// - `bf16`: torch.autocast('cpu', dtype=bfloat16)'s semantics for the linear layers: inputs and weights
///   rounded to bfloat16, products accumulated and written in float32 (oneDNN matmul, `BF16Matmul`);
///   norms, softmax, GELU, losses, attention's small products and the master weights stay float32.
public enum Precision: String, CaseIterable, Codable, Sendable {
    case fp32, bf16
}

/// bfloat16 bits of `x`, rounded to nearest even (torch's `x.to(torch.bfloat16)`); NaN stays NaN.
@inlinable
public func bf16Bits(_ x: Float) -> UInt16 {
    let bits = x.bitPattern
    if x.isNaN { return UInt16(truncatingIfNeeded: bits >> 16) | 0x40 }
    return UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16)
}

/// The float32 value of bfloat16 bits.
@inlinable
public func floatFromBF16(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }

/// out[i] = float32(bf16(input[i])): the value the bf16 path multiplies, as float32 (the fallback of
/// `BF16Matmul` where oneDNN has no bf16 matmul).
public func roundToBF16(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>, count: Int) {
    Parallel.forRanges(count, grain: 1 << 15) { range in
        for i in range { out[i] = floatFromBF16(bf16Bits(input[i])) }
    }
}

/// out[i] = bf16(input[i]) (round to nearest even), split over the workers.
public func convertToBF16(out: UnsafeMutablePointer<UInt16>, input: UnsafePointer<Float>, count: Int) {
    Parallel.forRanges(count, grain: 1 << 15) { range in
        convertToBF16Serial(out: out + range.lowerBound, input: input + range.lowerBound, count: range.count)
    }
}

/// `convertToBF16` on the calling thread alone (inside a parallel loop).
public func convertToBF16Serial(out: UnsafeMutablePointer<UInt16>, input: UnsafePointer<Float>, count: Int) {
    var i = 0
    let one = SIMD16<UInt32>(repeating: 1), half = SIMD16<UInt32>(repeating: 0x7FFF)
    while i + 16 <= count {
        let bits = UnsafeRawPointer(input + i).loadUnaligned(as: SIMD16<UInt32>.self)
        let rounded = (bits &+ half &+ ((bits &>> 16) & one)) &>> 16
        // NaN (exponent all ones, mantissa non-zero) would round into infinity: keep it a NaN.
        let isNaN = (bits & 0x7FFF_FFFF) .> 0x7F80_0000
        let result = rounded.replacing(with: (bits &>> 16) | 0x40, where: isNaN)
        UnsafeMutableRawPointer(out + i).storeBytes(of: SIMD16<UInt16>(truncatingIfNeeded: result), as: SIMD16<UInt16>.self)
        i += 16
    }
    while i < count { out[i] = bf16Bits(input[i]); i += 1 }
}

/// Matrix products with bfloat16 operands, float32 accumulation and a float32 result. Three backends,
/// chosen once per process for the CPU (`Backend.best`):
/// - `.vdpbf16ps`, where the CPU has AVX512-BF16 but no AMX (AMD Zen 4 / Zen 5, Intel Cooper Lake): our
///   own kernel (`CAVX512`'s bf16_gemm.c, 6 x 64 tiles of vdpbf16ps). oneDNN 2.6's avx512_core_bf16 matmul runs
///   340-680 GFLOP/s on ViT-B's shapes on a 2-core Zen 5, ours 790-870 (both with the activations'
///   conversion; scripts/matmul_rates.sh).
/// - `.oneDNN` elsewhere that oneDNN has a bf16 matmul (AMX: brg:avx512_core_amx_bf16, 3-5x our fp32).
/// - `.sgemmFallback` where neither runs bf16 (before AVX-512): sgemm on the bf16-rounded operands
///   (exact products, fp32 accumulation), slower.
/// Weights are packed once per weight version (`BF16WeightCache`), activations converted per call. Like
/// `BLAS.gemm`, a product is split by rows of C over our own workers; under oneDNN each runs a one-thread
/// primitive on its rows (oneDNN's OpenMP team is set to 1 on every thread that calls it): an OpenMP team
/// of its own would spin between calls and steal the cores from our parallel loops (measured: a ViT
/// training step 12x slower on two busy cores). oneDNN slices never share a primitive: oneDNN 2.6's
/// brgemm matmul crashed when one primitive ran on two threads at once. Calls are serialised by a lock.
public enum BF16Matmul {
    /// How an operand (R, C) sits in memory.
    /// Who multiplies (see the type's documentation).
    public enum Backend: String, CaseIterable, Sendable {
        case vdpbf16ps, oneDNN, sgemmFallback

        /// The fastest one this CPU runs: oneDNN on AMX, our kernel on AVX512-BF16, else oneDNN's bf16
        /// matmul where it has one, else the fallback.
        public static let best: Backend = {
            let isa = dnnl_get_effective_cpu_isa()
            if isa.rawValue & dnnl_cpu_isa_avx512_core_amx.rawValue == dnnl_cpu_isa_avx512_core_amx.rawValue,
               BF16Matmul.oneDNNHasBF16 { return .oneDNN }
            if mae_bf16_gemm_available() != 0 { return .vdpbf16ps }
            return BF16Matmul.oneDNNHasBF16 ? .oneDNN : .sgemmFallback
        }()

        /// Those this CPU can run (`best` among them), for tests that check each.
        public static var available: [Backend] {
            allCases.filter { $0 != .vdpbf16ps || mae_bf16_gemm_available() != 0 }
                .filter { $0 != .oneDNN || BF16Matmul.oneDNNHasBF16 }
        }
    }

    /// The backend products run on; `Backend.best` unless a test or a comparison sets another available one.
    public static var backend: Backend {
        get { serialised { state.backend } }
        set {
            precondition(Backend.available.contains(newValue), "the \(newValue) bf16 backend cannot run on this CPU")
            serialised { state.backend = newValue }
        }
    }

    public enum Layout: Int32, Sendable {
        /// Row-major (R, C).
        case rowMajor = 0
        /// Stored as its transpose: (C, R) row-major.
        case transposed = 1
        /// Weights only: oneDNN's blocked layout, made by `BF16WeightCache`.
        case packed = 2
    }

    /// A primitive's problem: (M,K) x (K,N) with leading dimensions; packed weights in the layout
    /// oneDNN chose for `packedFor` rows (the whole product a row slice belongs to).
    private struct Shape: Hashable {
        let m, k, n, lda, ldb, ldc: Int
        let src, weights: Layout
        let accumulate: Bool
        var packedFor = 0
        /// The row slice the primitive serves: slices of one product run concurrently, each on its own primitive.
        var slice = 0
    }

    private final class State: @unchecked Sendable {
        let lock = NSLock()
        var engine: dnnl_engine_t?
        /// One stream per worker chunk (the first also runs the packs).
        var streams: [dnnl_stream_t?] = []
        var primitives: [Shape: mae_dnnl_matmul] = [:]
        /// oneDNN has a bf16 matmul for this CPU.
        var native = false
        lazy var backend = Backend.best
        /// bf16 copies of the activations of the call in progress (grown as needed); float32 ones for the fallback.
        var source = Scratch<UInt16>(), second = Scratch<UInt16>()
        /// `.vdpbf16ps`: the activations' pairs and panels (the weight gradient's operands).
        var pairs = Scratch<UInt32>(), panels = Scratch<UInt32>()
        var roundedSource = Scratch<Float>(), roundedSecond = Scratch<Float>()
    }

    /// A reusable buffer.
    struct Scratch<Element> {
        private(set) var pointer: UnsafeMutablePointer<Element>?
        private var capacity = 0
        mutating func reserve(_ count: Int) -> UnsafeMutablePointer<Element> {
            if count > capacity {
                pointer?.deallocate()
                pointer = .allocate(capacity: count)
                capacity = count
            }
            return pointer!
        }
    }

    private static let state: State = {
        let s = State()
        var engine: dnnl_engine_t?
        check(dnnl_engine_create(&engine, dnnl_cpu, 0), "create the CPU engine")
        s.engine = engine
        var stream: dnnl_stream_t?
        check(dnnl_stream_create(&stream, engine, dnnl_stream_default_flags.rawValue), "create a stream")
        s.streams = [stream]
        _ = mae_omp_set_num_threads(1)
        var probe = mae_dnnl_matmul()
        s.native = mae_dnnl_matmul_create(&probe, engine, 16, 64, 64, 0, 64, 2, 0, nil, 64, 0) == dnnl_success
        if s.native { dnnl_primitive_destroy(probe.primitive) }
        return s
    }()

    /// oneDNN 2.6 has a bf16 matmul for this CPU (AVX-512 or later).
    static var oneDNNHasBF16: Bool { state.native }

    private static func check(_ status: dnnl_status_t, _ what: String) {
        precondition(status == dnnl_success, "oneDNN could not \(what) (status \(status.rawValue))")
    }

    /// The primitive for this shape, made on first use; packed weights in `packedLayout` when given.
    /// Call with the lock held.
    private static func primitive(_ shape: Shape, packedLayout: dnnl_memory_desc_t? = nil) -> mae_dnnl_matmul {
        if let p = state.primitives[shape] { return p }
        var mm = mae_dnnl_matmul()
        var layout = packedLayout ?? dnnl_memory_desc_t()
        let status = withUnsafePointer(to: &layout) { given in
            mae_dnnl_matmul_create(&mm, state.engine, Int64(shape.m), Int64(shape.k), Int64(shape.n),
                                   shape.src.rawValue, Int64(shape.lda), shape.weights.rawValue, Int64(shape.ldb),
                                   packedLayout == nil ? nil : given, Int64(shape.ldc), shape.accumulate ? 1 : 0)
        }
        check(status, "create a \(shape.m)x\(shape.k)x\(shape.n) bf16 matmul")
        state.primitives[shape] = mm
        return mm
    }

    /// Runs `body` with the lock held, oneDNN's team on this thread set to one.
    private static func serialised<T>(_ body: () -> T) -> T {
        state.lock.lock(); defer { state.lock.unlock() }
        _ = mae_omp_set_num_threads(1)
        return body()
    }

    /// The row slices of an M-row product: one below 2^21 multiply-adds (as `BLAS.gemm`), else one per
    /// worker of at least 16 rows; the same static partition as `Parallel.forChunks`.
    private static func slices(m: Int, n: Int, k: Int) -> [Range<Int>] {
        let chunks = m * n * k < 1 << 21 ? 1 : Parallel.chunkCount(m, grain: 16)
        return (0..<chunks).map { c in (m * c / chunks)..<(m * (c + 1) / chunks) }
    }

    /// Runs `body(slice, rows, stream)` for every slice on the workers, each thread's OpenMP team at one.
    private static func run(_ slices: [Range<Int>], _ body: (Int, Range<Int>, dnnl_stream_t?) -> Void) {
        while state.streams.count < slices.count {
            var stream: dnnl_stream_t?
            check(dnnl_stream_create(&stream, state.engine, dnnl_stream_default_flags.rawValue), "create a stream")
            state.streams.append(stream)
        }
        let streams = state.streams
        if slices.count == 1 { body(0, slices[0], streams[0]); return }
        DispatchQueue.concurrentPerform(iterations: slices.count) { i in
            _ = mae_omp_set_num_threads(1)
            body(i, slices[i], streams[i])
        }
    }

    /// C (M,N) [+]= A (M,K) . op(W), A float32 row-major (converted to bf16 here), W a weight matrix
    /// packed by `cache` for `layout` (`.transposed`: W stored (N,K), a linear layer's [out, in];
    /// `.rowMajor`: stored (K,N)). `accumulate` adds into C, else C is overwritten.
    public static func product(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, m: Int, k: Int, n: Int,
                               weight: UnsafePointer<Float>, layout: Layout, cache: BF16WeightCache,
                               accumulate: Bool) {
        guard m > 0, n > 0 else { return }
        // The fallback's sgemm measures itself; the native product is measured here.
        serialised {
            switch state.backend {
            case .vdpbf16ps:
                Profiler.measure(.gemm) {
                    let panels = cache.panels(weight, k: k, n: n, layout: layout), ld = (k + 1) / 2 * 2
                    let src = state.source.reserve(m * ld)
                    run(slices(m: m, n: n, k: k)) { _, rows, _ in
                        let a0 = src + rows.lowerBound * ld
                        mae_bf16_convert_rows(a0, ld, a + rows.lowerBound * k, k, rows.count, k)
                        a0.withMemoryRebound(to: UInt32.self, capacity: rows.count * ld / 2) { words in
                            mae_bf16_gemm(rows.count, n, ld / 2, words, Int(MAE_BF16_TILE_ROWS) * ld / 2, 1, ld / 2, panels,
                                          mae_bf16_panel_stride(k), c + rows.lowerBound * n, n, accumulate ? 1 : 0)
                        }
                    }
                }
                return
            case .sgemmFallback:
                let w = cache.rounded(weight, count: k * n), src = state.roundedSource.reserve(m * k)
                roundToBF16(out: src, input: a, count: m * k)
                BLAS.gemm(transB: layout == .transposed, m: m, n: n, k: k, a: src, lda: k, b: w,
                          ldb: layout == .transposed ? k : n, beta: accumulate ? 1 : 0, c: c, ldc: n)
                return
            case .oneDNN: break
            }
            Profiler.measure(.gemm) {
                // The packed layout oneDNN prefers for the whole product; every row slice reads that pack.
                let whole = primitive(Shape(m: m, k: k, n: n, lda: k, ldb: 0, ldc: n, src: .rowMajor, weights: .packed,
                                            accumulate: accumulate))
                let packed = cache.packed(weight, k: k, n: n, layout: layout, for: whole.weights, engine: state.engine,
                                          stream: state.streams[0])
                let parts = slices(m: m, n: n, k: k)
                let primitives = parts.indices.map {
                    primitive(Shape(m: parts[$0].count, k: k, n: n, lda: k, ldb: 0, ldc: n, src: .rowMajor, weights: .packed,
                                    accumulate: accumulate, packedFor: m, slice: $0), packedLayout: whole.weights)
                }
                let src = state.source.reserve(m * k)
                run(parts) { i, rows, stream in
                    var mm = primitives[i]
                    let a0 = src + rows.lowerBound * k
                    convertToBF16Serial(out: a0, input: a + rows.lowerBound * k, count: rows.count * k)
                    check(mae_dnnl_matmul_run(&mm, state.engine, stream, a0, packed, c + rows.lowerBound * n),
                          "run a bf16 matmul")
                }
            }
        }
    }

    /// C (M,N) [+]= op(A) . B with both operands float32 activations (converted to bf16 here):
    /// A (M,K) is stored as `aLayout` says, B (K,N) row-major. The weight gradient of a linear layer.
    public static func product(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, aLayout: Layout,
                               b: UnsafePointer<Float>, m: Int, k: Int, n: Int, accumulate: Bool) {
        guard m > 0, n > 0 else { return }
        precondition(aLayout != .packed, "activations are never packed")
        serialised {
            switch state.backend {
            case .vdpbf16ps:
                Profiler.measure(.gemm) { ownProduct(c: c, a: a, aLayout: aLayout, b: b, m: m, k: k, n: n, accumulate: accumulate) }
                return
            case .sgemmFallback:
                let src = state.roundedSource.reserve(m * k), wei = state.roundedSecond.reserve(k * n)
                roundToBF16(out: src, input: a, count: m * k)
                roundToBF16(out: wei, input: b, count: k * n)
                BLAS.gemm(transA: aLayout == .transposed, m: m, n: n, k: k, a: src,
                          lda: aLayout == .transposed ? m : k, b: wei, ldb: n, beta: accumulate ? 1 : 0, c: c, ldc: n)
                return
            case .oneDNN: break
            }
            Profiler.measure(.gemm) {
                let src = state.source.reserve(m * k), wei = state.second.reserve(k * n)
                convertToBF16(out: src, input: a, count: m * k)
                convertToBF16(out: wei, input: b, count: k * n)
                // Rows of C are rows of op(A): a column block of A when it is stored transposed.
                let lda = aLayout == .transposed ? m : k
                let parts = slices(m: m, n: n, k: k)
                let primitives = parts.indices.map {
                    primitive(Shape(m: parts[$0].count, k: k, n: n, lda: lda, ldb: n, ldc: n, src: aLayout, weights: .rowMajor,
                                    accumulate: accumulate, slice: $0))
                }
                run(parts) { i, rows, stream in
                    var mm = primitives[i]
                    let a0 = aLayout == .transposed ? src + rows.lowerBound : src + rows.lowerBound * k
                    check(mae_dnnl_matmul_run(&mm, state.engine, stream, a0, wei, c + rows.lowerBound * n),
                          "run a bf16 matmul")
                }
            }
        }
    }

    /// `product(c:a:aLayout:b:...)` on our kernel, lock held: A in tiles of 6 rows (packed from its
    /// transpose when stored (K, M): no transpose pass) or in bf16 rows, B (K,N) packed into panels, both
    /// split over the workers; then C by row slices that start on a tile.
    private static func ownProduct(c: UnsafeMutablePointer<Float>, a: UnsafePointer<Float>, aLayout: Layout,
                                   b: UnsafePointer<Float>, m: Int, k: Int, n: Int, accumulate: Bool) {
        let pairs = (k + 1) / 2, stride = mae_bf16_panel_stride(k), panelCount = (n + 63) / 64, tile = Int(MAE_BF16_TILE_ROWS)
        let tiles = (m + tile - 1) / tile
        let words = state.pairs.reserve(tiles * tile * pairs), panels = state.panels.reserve(panelCount * stride)
        // Word (row, pair) at (row / 6) * tileStride + pair * pairStride + (row % 6) * rowStride.
        let (tileStride, pairStride, rowStride) = aLayout == .transposed ? (tile * pairs, tile, 1) : (tile * pairs, 1, pairs)
        if aLayout == .transposed {
            Parallel.forRanges(pairs, grain: 8) { p in mae_bf16_pack_tiles(words, a, m, k, m, p.lowerBound, p.upperBound) }
        } else {
            words.withMemoryRebound(to: UInt16.self, capacity: 2 * tiles * tile * pairs) { rows in
                Parallel.forRanges(m, grain: 8) { r in
                    mae_bf16_convert_rows(rows + r.lowerBound * 2 * pairs, 2 * pairs, a + r.lowerBound * k, k, r.count, k)
                }
            }
        }
        Parallel.forRanges(panelCount) { p in mae_bf16_pack_panels(panels, b, n, 0, k, n, p.lowerBound, p.upperBound) }
        // Row slices that start on a tile.
        let parts = slices(m: m, n: n, k: k).map { ($0.lowerBound / tile * tile)..<($0.upperBound == m ? m : $0.upperBound / tile * tile) }
        run(parts.filter { !$0.isEmpty }) { _, rows, _ in
            mae_bf16_gemm(rows.count, n, pairs, words + rows.lowerBound / tile * tileStride, tileStride, pairStride, rowStride,
                          panels, stride, c + rows.lowerBound * n, n, accumulate ? 1 : 0)
        }
    }

    /// C (M,N) [+]= op(A) . op(B) on the calling thread, with our kernel (`Backend.vdpbf16ps` only) and
    /// no lock: attention's per-head products inside a parallel loop, one `scratch` per worker. Float32
    /// operands, rounded to bf16 here: A (M,K) rows, or stored (K,M) when `aTransposed`; B (K,N) rows, or
    /// stored (N,K) when `bTransposed`; leading dimensions lda, ldb, ldc. `accumulate` adds into C.
    public static func serialProduct(c: UnsafeMutablePointer<Float>, ldc: Int, a: UnsafePointer<Float>, lda: Int,
                                     aTransposed: Bool = false, b: UnsafePointer<Float>, ldb: Int, bTransposed: Bool,
                                     m: Int, k: Int, n: Int, accumulate: Bool = false, scratch: BF16Scratch) {
        let pairs = (k + 1) / 2, stride = mae_bf16_panel_stride(k), panelCount = (n + 63) / 64, tile = Int(MAE_BF16_TILE_ROWS)
        let words = scratch.words.reserve((m + tile - 1) / tile * tile * pairs), panels = scratch.panels.reserve(panelCount * stride)
        // Word (row, pair) at (row / 6) * 6 * pairs + pair * pairStride + (row % 6) * rowStride.
        let (pairStride, rowStride) = aTransposed ? (tile, 1) : (1, pairs)
        if aTransposed {
            mae_bf16_pack_tiles(words, a, lda, k, m, 0, pairs)
        } else {
            words.withMemoryRebound(to: UInt16.self, capacity: 2 * m * pairs) { mae_bf16_convert_rows($0, 2 * pairs, a, lda, m, k) }
        }
        mae_bf16_pack_panels(panels, b, ldb, bTransposed ? 1 : 0, k, n, 0, panelCount)
        mae_bf16_gemm(m, n, pairs, words, tile * pairs, pairStride, rowStride, panels, stride, c, ldc, accumulate ? 1 : 0)
    }

    /// The kernel a bf16 product of this shape runs on: "vdpbf16ps 6x64 (mae-eval)", oneDNN's
    /// ("brg:avx512_core_amx_bf16"), or the fallback's name.
    public static func kernelName(m: Int = 1576, k: Int = 768, n: Int = 768) -> String {
        serialised {
            switch state.backend {
            case .vdpbf16ps: return "vdpbf16ps 6x64"
            case .sgemmFallback: return "sgemm on bf16-rounded operands (oneDNN has no bf16 matmul here)"
            case .oneDNN: break
            }
            var mm = primitive(Shape(m: m, k: k, n: n, lda: k, ldb: 0, ldc: n, src: .rowMajor, weights: .packed,
                                     accumulate: false))
            return String(cString: mae_dnnl_matmul_impl(&mm))
        }
    }
}

/// One worker's buffers for `BF16Matmul.serialProduct` (grown as needed, freed with it).
public final class BF16Scratch {
    fileprivate var words = BF16Matmul.Scratch<UInt32>(), panels = BF16Matmul.Scratch<UInt32>()
    private var statistics = BF16Matmul.Scratch<Float>()

    public init() {}

    deinit { words.pointer?.deallocate(); panels.pointer?.deallocate(); statistics.pointer?.deallocate() }

    /// `count` floats for the caller's per-row statistics (the softmax's row maxes and sums).
    func rowStatistics(_ count: Int) -> UnsafeMutablePointer<Float> { statistics.reserve(count) }
}

/// bf16 copies of a parameter store's weight matrices in oneDNN's blocked layout: each made on first
/// use and reused until `weightsChanged()` (called by everything that writes the weights: optimizer
/// steps, loading, `ParameterStore.set`/`value`), so no product ever reads a stale copy and none packs
/// a weight twice for one version. Copies are keyed by the weight's address: one cache serves one
/// owner of weight buffers (a `ParameterStore`), whose writers all call `weightsChanged()`.
public final class BF16WeightCache: @unchecked Sendable {
    private struct Key: Hashable {
        let address: Int
        let layout: Int32
    }

    private struct Pack {
        var version: Int
        var descriptor: dnnl_memory_desc_t
        var bytes: Int
        var storage: UnsafeMutableRawPointer
    }

    /// Bumped by `weightsChanged()`; a pack made at an older version is remade before use.
    public private(set) var version = 0
    private var packs: [Key: Pack] = [:]
    /// How many packs were made (tests check that a version is packed once, and again after a change).
    public private(set) var packCount = 0

    public init() {}

    deinit { for p in packs.values { p.storage.deallocate() } }

    /// Marks every pack stale: the weights were written.
    public func weightsChanged() { version &+= 1 }

    /// A float32 copy of `count` weights rounded to bf16 (the fallback's operand); lock held as `packed`.
    fileprivate func rounded(_ weight: UnsafePointer<Float>, count: Int) -> UnsafePointer<Float> {
        let key = Key(address: Int(bitPattern: weight), layout: -1)
        if let p = packs[key], p.version == version, p.bytes == count * 4 {
            return UnsafePointer(p.storage.assumingMemoryBound(to: Float.self))
        }
        packs[key]?.storage.deallocate()
        let storage = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: 64)
        let out = storage.bindMemory(to: Float.self, capacity: count)
        roundToBF16(out: out, input: weight, count: count)
        packs[key] = Pack(version: version, descriptor: dnnl_memory_desc_t(), bytes: count * 4, storage: storage)
        packCount += 1
        return UnsafePointer(out)
    }

    /// The weights (K,N), laid out as `layout`, packed into bf16_gemm.c's panels; lock held as `packed`.
    fileprivate func panels(_ weight: UnsafePointer<Float>, k: Int, n: Int, layout: BF16Matmul.Layout) -> UnsafePointer<UInt32> {
        let key = Key(address: Int(bitPattern: weight), layout: 8 + layout.rawValue)
        let panelCount = (n + 63) / 64, stride = mae_bf16_panel_stride(k), bytes = panelCount * stride * 4
        if let p = packs[key], p.version == version, p.bytes == bytes {
            return UnsafePointer(p.storage.assumingMemoryBound(to: UInt32.self))
        }
        // A new version of the same weight reuses its storage (fresh pages would be zeroed by the kernel: 13% of a step).
        var reused = packs[key]?.storage
        if let old = packs[key], old.bytes != bytes { old.storage.deallocate(); reused = nil }
        let storage = reused ?? .allocate(byteCount: max(bytes, 4), alignment: 64)
        let out = storage.bindMemory(to: UInt32.self, capacity: panelCount * stride)
        let transposed: Int32 = layout == .transposed ? 1 : 0, ld = layout == .transposed ? k : n
        Parallel.forRanges(panelCount) { p in mae_bf16_pack_panels(out, weight, ld, transposed, k, n, p.lowerBound, p.upperBound) }
        packs[key] = Pack(version: version, descriptor: dnnl_memory_desc_t(), bytes: bytes, storage: storage)
        packCount += 1
        return UnsafePointer(out)
    }

    /// The packed copy of weights (K,N) laid out as `layout`, in the blocked layout `descriptor`; called
    /// with BF16Matmul's lock held.
    fileprivate func packed(_ weight: UnsafePointer<Float>, k: Int, n: Int, layout: BF16Matmul.Layout,
                            for descriptor: dnnl_memory_desc_t, engine: dnnl_engine_t?, stream: dnnl_stream_t?) -> UnsafeRawPointer {
        let key = Key(address: Int(bitPattern: weight), layout: layout.rawValue)
        var target = descriptor
        if let p = packs[key], p.version == version {
            var stored = p.descriptor
            if dnnl_memory_desc_equal(&stored, &target) != 0 { return UnsafeRawPointer(p.storage) }
        }
        let bytes = dnnl_memory_desc_get_size(&target)
        var reused = packs[key]?.storage
        if let old = packs[key], old.bytes != bytes { old.storage.deallocate(); reused = nil }
        let storage = reused ?? .allocate(byteCount: max(bytes, 1), alignment: 64)
        let status = mae_dnnl_pack(engine, stream, weight, Int64(k), Int64(n), layout.rawValue, &target, storage)
        precondition(status == dnnl_success, "oneDNN could not pack a \(k)x\(n) weight (status \(status.rawValue))")
        packs[key] = Pack(version: version, descriptor: target, bytes: bytes, storage: storage)
        packCount += 1
        return UnsafeRawPointer(storage)
    }
}

/// The bf16 backend as `--version` and `bench` state it.
public struct BF16Info: Sendable, Equatable, Codable {
    /// "oneDNN", or "mae-eval" (our AVX512-BF16 kernel).
    public var library: String
    /// "2.6.3" (oneDNN's), or "built-in".
    public var version: String
    /// The widest ISA oneDNN uses on this CPU (`dnnl_get_effective_cpu_isa`: "avx512_core_amx"), or
    /// "avx512_bf16" for our kernel.
    public var isa: String
    /// The kernel of a ViT-B linear layer's bf16 product ("brg:avx512_core_amx_bf16", "vdpbf16ps 6x64").
    public var kernel: String

    /// What the running backend (`BF16Matmul.backend`) reports.
    public static var current: BF16Info {
        if BF16Matmul.backend == .vdpbf16ps {
            return BF16Info(library: "mae-eval", version: "built-in", isa: "avx512_bf16", kernel: BF16Matmul.kernelName())
        }
        let v = dnnl_version()!.pointee
        return BF16Info(library: "oneDNN", version: "\(v.major).\(v.minor).\(v.patch)",
                        isa: isaName(dnnl_get_effective_cpu_isa()), kernel: BF16Matmul.kernelName())
    }

    public init(library: String, version: String, isa: String, kernel: String) {
        self.library = library; self.version = version; self.isa = isa; self.kernel = kernel
    }

    /// "oneDNN 2.6.3, ISA avx512_core_bf16, kernel brg:avx512_core_bf16".
    public var summary: String { "\(library) \(version), ISA \(isa), kernel \(kernel)" }

    static func isaName(_ isa: dnnl_cpu_isa_t) -> String {
        switch isa {
        case dnnl_cpu_isa_sse41: return "sse41"
        case dnnl_cpu_isa_avx: return "avx"
        case dnnl_cpu_isa_avx2: return "avx2"
        case dnnl_cpu_isa_avx512_mic: return "avx512_mic"
        case dnnl_cpu_isa_avx512_mic_4ops: return "avx512_mic_4ops"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        default: return "isa 0x\(String(isa.rawValue, radix: 16))"
        }
    }
}
