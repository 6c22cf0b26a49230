// GFLOP/s of the linear layers' products at ViT-B/16 batch-8 shapes (M = 8 x 197 rows): fp32 through
// OpenBLAS sgemm (`linearForward`), bf16 (`linearForward(bf16:)`: activations converted per call, weights
// packed once) on every bf16 backend this CPU runs (ours on AVX512-BF16, oneDNN, the sgemm fallback),
// and the two backward products in bf16 and fp32. Compiled with the kernels by scripts/matmul_rates.sh;
// median of a few calls after a warm-up, not a test.
import Foundation

func median(_ repeats: Int, _ body: () -> Void) -> Double {
    body()
    let times = (0..<repeats).map { _ -> Double in
        let t = DispatchTime.now().uptimeNanoseconds
        body()
        return Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
    }.sorted()
    return times[times.count / 2]
}

let m = 8 * 197, repeats = 7
let shapes = [("qkv 768->2304", 768, 2304), ("proj 768->768", 768, 768), ("fc1 768->3072", 768, 3072),
              ("fc2 3072->768", 3072, 768)]
print("CPU: \(CPUFeatures.current.bestISA); BLAS: \(BLASInfo.current.summary); workers \(Parallel.workers)")
for backend in BF16Matmul.Backend.available {
BF16Matmul.backend = backend
print("bf16 backend \(backend) (\(BF16Info.current.summary))\(backend == .best ? ", the default here" : "")")
print("shape            sgemm fwd   bf16 fwd   sgemm dX   bf16 dX   sgemm dW   bf16 dW   (GFLOP/s, M = \(m))")
for (name, k, n) in shapes {
    var rng = RandomStream(seed: 1)
    let x = Tensor([m, k]), w = Tensor([n, k]), y = Tensor([m, n]), dx = Tensor([m, k]), dw = Tensor([n, k])
    for i in 0..<x.count { x[i] = Float(rng.normal()) }
    for i in 0..<w.count { w[i] = Float(rng.normal()) * 0.02 }
    let cache = BF16WeightCache()
    let gflop = 2 * Double(m) * Double(k) * Double(n) / 1e9
    func rate(_ body: () -> Void) -> String { String(format: "%9.0f", gflop / median(repeats, body)) }
    let cells = [
        rate { linearForward(out: y.data, input: x.data, weight: w.data, bias: nil, rows: m, inDim: k, outDim: n) },
        rate { linearForward(out: y.data, input: x.data, weight: w.data, bias: nil, rows: m, inDim: k, outDim: n, bf16: cache) },
        rate { linearBackward(dInput: dx.data, dWeight: nil, dBias: nil, dOut: y.data, input: x.data, weight: w.data,
                              rows: m, inDim: k, outDim: n) },
        rate { linearBackward(dInput: dx.data, dWeight: nil, dBias: nil, dOut: y.data, input: x.data, weight: w.data,
                              rows: m, inDim: k, outDim: n, bf16: cache) },
        rate { linearBackward(dInput: nil, dWeight: dw.data, dBias: nil, dOut: y.data, input: x.data, weight: w.data,
                              rows: m, inDim: k, outDim: n) },
        rate { linearBackward(dInput: nil, dWeight: dw.data, dBias: nil, dOut: y.data, input: x.data, weight: w.data,
                              rows: m, inDim: k, outDim: n, bf16: cache) },
    ]
    print(name.padding(toLength: 15, withPad: " ", startingAt: 0), cells.joined(separator: "  "))
}
}
