import Foundation
import MAEDense
import MAEKernels
import MAEModels

/// Dense backbones `mae-eval bench` measures besides the ViT presets.
public enum DenseBenchPreset: String, CaseIterable, Sendable {
    /// ViTDet-B (detectron2 `mask_rcnn_vitdet_b`): ViT-B/16 pretrained at 224 px, window 14, global
    /// blocks 2, 5, 8, 11, rel-pos, + the simple feature pyramid (scale factors 4, 2, 1, 0.5, 256
    /// channels, p6). Forward only, the backbone and pyramid (no RPN or RoI heads).
    case vitdetBase = "vitdet_b"
}

/// Times `iters` forwards (after `warmup` untimed ones) of a dense backbone on random weights and a
/// random (B, 3, S, S) input, S = `imgSize` (ViTDet's 1024: a 64 x 64 token grid, windows padded
/// to 70 x 70, the four global blocks on 4096 tokens through the fused attention with the rel-pos bias).
func runDenseBenchmark(_ o: BenchOptions, _ preset: DenseBenchPreset) throws -> BenchResult {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    guard o.batchSize > 0, o.iters > 0 else { throw TaskError.badArgument("--batch-size and --iters must be positive") }
    guard o.mode == .forward else {
        throw TaskError.badArgument("\(preset.rawValue) is benchmarked in --mode forward only")
    }
    var config = ModelPreset.base.config
    guard o.imgSize > 0, o.imgSize % config.patchSize == 0 else {
        throw TaskError.badArgument("--img-size \(o.imgSize) is not a multiple of the patch size \(config.patchSize)")
    }
    config.vitdet = ViTDetOptions(for: config, inputSize: o.imgSize)
    let backbone = try ViTDetBackbone(config: config)
    backbone.initializeWeights(seed: 0)
    // Random rel-pos tables: zero ones would still cost the same, but keep the bias honest.
    var rng = RandomStream(seed: 1)
    for spec in backbone.params.specs where spec.name.contains("rel_pos") {
        let v = backbone.params.value(spec.name)
        for i in v.indices { v[i] = Float(rng.normal()) * 0.02 }
    }
    let b = o.batchSize, s = o.imgSize
    let images = Tensor([b, 3, s, s])
    for i in 0..<images.count { images[i] = Float(rng.normal()) }
    func step() { _ = backbone.forward(images: images.data, batch: b, height: s, width: s) }
    for _ in 0..<o.warmup { step() }
    Profiler.reset()
    Profiler.enabled = o.profile
    let start = DispatchTime.now().uptimeNanoseconds
    for _ in 0..<o.iters { step() }
    let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
    Profiler.enabled = false
    var share: [String: Double]?
    if o.profile {
        var t = Dictionary(uniqueKeysWithValues: Profiler.seconds.map { ($0.key.rawValue, $0.value / seconds) })
        t["rest"] = 1 - t.values.reduce(0, +)
        share = t.mapValues { ($0 * 1000).rounded() / 1000 }
    }
    return BenchResult(img_per_s: Double(b * o.iters) / seconds, model: preset.rawValue, mode: o.mode.rawValue,
                       batch_size: b, img_size: s, threads: Parallel.workers, iters: o.iters,
                       seconds_per_iter: seconds / Double(o.iters), mask_ratio: nil, time_share: share)
}
