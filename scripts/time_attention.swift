// Rough timing of the fused attention (FlashAttention.swift) against the materialised one
// (Attention.swift) at ViTDet's global-block size. Compiled with the kernels by
// scripts/time_attention.sh; not a test and not a benchmark (one warm-up, best of a few runs).
import Foundation

func seconds(_ body: () -> Void) -> Double {
    let t = DispatchTime.now().uptimeNanoseconds
    body()
    return Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9
}

let args = CommandLine.arguments.dropFirst().compactMap { Int($0) }
let arg = { (i: Int, fallback: Int) in args.count > i ? args[i] : fallback }
let (n, heads, hd, repeats) = (arg(0, 4096), arg(1, 12), 64, 3)
let tiles = AttentionTiles(queries: arg(2, AttentionTiles().queries), keys: arg(3, AttentionTiles().keys))
let d = heads * hd
let qkv = Tensor([1, n, 3 * d]), out = Tensor([1, n, d]), dOut = Tensor([1, n, d]), dQKV = Tensor([1, n, 3 * d])
var rng = RandomStream(seed: 1)
for i in 0..<qkv.count { qkv[i] = Float(rng.normal()) }
for i in 0..<dOut.count { dOut[i] = Float(rng.normal()) }
let lse = Tensor([1, heads, n])
let gh = Int(Double(n).squareRoot())
let decomposed = gh * gh == n
let relH = Tensor([heads, n, gh]), relW = Tensor([heads, n, gh])
let dRelH = Tensor([heads, n, gh]), dRelW = Tensor([heads, n, gh])
let size = FlashAttentionSize(batch: 1, tokens: n, width: d, heads: heads, tiles: tiles)
let bias: AttentionBias = decomposed ? .decomposed(relH: relH.data, relW: relW.data, height: gh, width: gh) : .none
let dBias: AttentionBiasGradient = decomposed ? .decomposed(dRelH: dRelH.data, dRelW: dRelW.data) : .none

func best(_ body: () -> Void) -> Double {
    body()
    return (0..<repeats).map { _ in seconds(body) }.min()!
}

// SWIFT_TILES=1 times the AVX2 Swift tile passes where the CPU would run the AVX-512 C ones.
if ProcessInfo.processInfo.environment["SWIFT_TILES"] != nil { attentionTilesAVX512 = false }
print("N \(n), heads \(heads), head width \(hd), batch 1, tiles \(tiles.queries)x\(tiles.keys), " +
      "workers \(Parallel.workers), tile passes \(attentionTilesAVX512 ? "AVX-512 C" : "AVX2 Swift"); best of \(repeats)")
let skipMaterialised = ProcessInfo.processInfo.environment["FUSED_ONLY"] != nil
if !skipMaterialised {
let probs = Tensor([1, heads, n, n])
let matF = best { attentionForward(out: out.data, probs: probs.data, qkv: qkv.data, batch: 1, tokens: n, width: d, heads: heads) }
let matB = best { attentionBackward(dQKV: dQKV.data, dOut: dOut.data, qkv: qkv.data, probs: probs.data,
                                    batch: 1, tokens: n, width: d, heads: heads) }
print(String(format: "materialised (no bias, P %.0f MB): forward %.3f s, backward %.3f s",
             Double(probs.count * 4) / 1e6, matF, matB))
}
for (label, b, g) in [("no bias", AttentionBias.none, AttentionBiasGradient.none),
                      (decomposed ? "decomposed rel-pos \(gh)x\(gh)" : "no bias", bias, dBias)] {
    let f = best { flashAttentionForward(out: out.data, logSumExp: lse.data, qkv: qkv.data, bias: b, size: size) }
    let bw = best { flashAttentionBackward(dQKV: dQKV.data, dBias: g, dOut: dOut.data, out: out.data, logSumExp: lse.data,
                                           qkv: qkv.data, bias: b, size: size) }
    print(String(format: "fused (%@): forward %.3f s, backward %.3f s", label, f, bw))
}
