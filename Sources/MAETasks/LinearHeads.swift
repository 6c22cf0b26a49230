import Foundation
import MAEKernels
import MAEModels

/// One head of a grid: its learning rate and weight decay.
public struct GridPoint: Sendable, Equatable {
    public var lr: Float
    public var wd: Float
    public init(lr: Float, wd: Float) { self.lr = lr; self.wd = wd }
}

/// Accuracy and loss of one head on a labelled set.
public struct HeadScore: Sendable {
    /// Percent.
    public var top1: Double
    public var top5: Double
    /// Mean cross-entropy.
    public var loss: Double
    /// Whether each scored sample, in order, was a top-1 hit (empty for a score made from counts).
    public var top1Hits: [Bool] = []
}

/// G linear classifiers over the same D-wide features, trained at once as DINOv2's linear eval
/// does: one product X (B,D) . W (D,G*K) gives every head's logits, one X^T . dLogits every
/// gradient; each head has its own learning rate and weight decay (SGD, momentum 0.9, warmup +
/// cosine per step).
public final class LinearHeads {
    public let width: Int, classes: Int
    public let points: [GridPoint]
    /// (D, G*K): column g*K + c is head g's weight for class c.
    public private(set) var weights: [Float]
    /// (G*K)
    public private(set) var bias: [Float]
    private var momentumW: [Float], momentumB: [Float]

    public var count: Int { points.count }

    public init(width: Int, classes: Int, points: [GridPoint]) {
        self.width = width; self.classes = classes; self.points = points
        let gk = points.count * classes
        weights = .init(repeating: 0, count: width * gk)
        bias = .init(repeating: 0, count: gk)
        momentumW = weights; momentumB = bias
    }

    /// Logits (N, G*K) of x (N,D).
    public func logits(_ x: UnsafePointer<Float>, rows n: Int) -> [Float] {
        let gk = count * classes
        var out = [Float](repeating: 0, count: n * gk)
        out.withUnsafeMutableBufferPointer { o in
            for r in 0..<n { for j in 0..<gk { o[r * gk + j] = bias[j] } }
            weights.withUnsafeBufferPointer { w in
                BLAS.gemm(m: n, n: gk, k: width, a: x, lda: width, b: w.baseAddress!, ldb: gk, beta: 1,
                          c: o.baseAddress!, ldc: gk)
            }
        }
        return out
    }

    /// Trains for `epochs` over x (N,D) with integer labels; `onEpoch(epoch, meanLossPerHead)`.
    public func train(_ x: [Float], labels: [Int], epochs: Int, batchSize: Int, warmupEpochs: Double,
                      seed: UInt64, onEpoch: ((Int, [Double]) -> Void)? = nil) {
        let n = labels.count, d = width, k = classes, g = count, gk = g * k
        precondition(x.count == n * d && n > 0, "features must be (N, D)")
        let steps = max(1, (n + batchSize - 1) / batchSize)
        let schedule = WarmupCosine(baseLR: 1, warmupEpochs: warmupEpochs, epochs: Double(epochs))
        let lrCol = (0..<gk).map { points[$0 / k].lr }, wdCol = (0..<gk).map { points[$0 / k].wd }
        var rng = RandomStream(seed: seed &+ 0x9e37_79b9)
        var order = Array(0..<n)
        var xb = [Float](repeating: 0, count: batchSize * d)
        var dLogits = [Float](repeating: 0, count: batchSize * gk)
        var dW = [Float](repeating: 0, count: d * gk)
        var targets = [Float](repeating: 0, count: batchSize * g)   // (B, G): each head's target logit
        var stepCol = lrCol                                          // (G*K): this step's lr per column
        for epoch in 0..<epochs {
            rng.shuffle(&order)
            var lossSum = [Double](repeating: 0, count: g)
            for step in 0..<steps {
                let rows = order[(step * batchSize)..<min(n, (step + 1) * batchSize)]
                let b = rows.count
                for (r, i) in rows.enumerated() {
                    for j in 0..<d { xb[r * d + j] = x[i * d + j] }
                }
                var logits = xb.withUnsafeBufferPointer { self.logits($0.baseAddress!, rows: b) }
                // Softmax per head block, exponentials of the whole batch at once; dLogits = (p - onehot) / B.
                let yb = rows.map { labels[$0] }
                logits.withUnsafeMutableBufferPointer { lp in
                    let l = lp.baseAddress!
                    for r in 0..<b {
                        for h in 0..<g {
                            let base = r * gk + h * k
                            var mx = -Float.infinity
                            for c in 0..<k { mx = max(mx, l[base + c]) }
                            for c in 0..<k { l[base + c] -= mx }
                            targets[r * g + h] = l[base + yb[r]]
                        }
                    }
                    expVectorized(l, l, b * gk)
                    dLogits.withUnsafeMutableBufferPointer { dp in
                        let dl = dp.baseAddress!, inv = 1 / Float(b)
                        for r in 0..<b {
                            for h in 0..<g {
                                let base = r * gk + h * k
                                var sum: Float = 0
                                for c in 0..<k { sum += l[base + c] }
                                // log-sum-exp form: finite even when the target's probability underflows.
                                lossSum[h] += Double(logf(sum) - targets[r * g + h])
                                let scale = inv / sum
                                for c in 0..<k { dl[base + c] = l[base + c] * scale }
                                dl[base + yb[r]] -= inv
                            }
                        }
                    }
                }
                xb.withUnsafeBufferPointer { xp in
                    dLogits.withUnsafeBufferPointer { lp in
                        dW.withUnsafeMutableBufferPointer { wp in
                            BLAS.gemm(transA: true, m: d, n: gk, k: b, a: xp.baseAddress!, lda: d, b: lp.baseAddress!,
                                      ldb: gk, c: wp.baseAddress!, ldc: gk)
                        }
                    }
                }
                let scale = schedule.lr(atEpoch: Double(epoch) + Double(step) / Double(steps))
                // SGD as torch: grad += wd * p; buf = 0.9 buf + grad; p -= lr * buf (no decay on biases).
                for j in 0..<gk { stepCol[j] = scale * lrCol[j] }
                weights.withUnsafeMutableBufferPointer { wp in
                    momentumW.withUnsafeMutableBufferPointer { mp in
                        dW.withUnsafeBufferPointer { gp in
                            let w = wp.baseAddress!, m = mp.baseAddress!, grad = gp.baseAddress!
                            for row in 0..<d {
                                let o = row * gk
                                for j in 0..<gk {
                                    m[o + j] = 0.9 * m[o + j] + grad[o + j] + wdCol[j] * w[o + j]
                                    w[o + j] -= stepCol[j] * m[o + j]
                                }
                            }
                        }
                    }
                }
                for j in 0..<gk {
                    var gb: Float = 0
                    for r in 0..<b { gb += dLogits[r * gk + j] }
                    momentumB[j] = 0.9 * momentumB[j] + gb
                    bias[j] -= stepCol[j] * momentumB[j]
                }
            }
            onEpoch?(epoch + 1, lossSum.map { $0 / Double(n) })
        }
    }

    /// Every head's top-1, top-5 (percent, by `TopKTally`) and mean loss on x (N,D).
    public func evaluate(_ x: [Float], labels: [Int]) -> [HeadScore] {
        let n = labels.count, k = classes, g = count, gk = g * k, chunk = 1024
        var tallies = [TopKTally](repeating: TopKTally(), count: g), loss = [Double](repeating: 0, count: g)
        var start = 0
        while start < n {
            let rows = min(chunk, n - start)
            let logits = x.withUnsafeBufferPointer { self.logits($0.baseAddress! + start * width, rows: rows) }
            for r in 0..<rows {
                let y = labels[start + r]
                for h in 0..<g {
                    let head = logits[(r * gk + h * k)..<(r * gk + h * k + k)]
                    tallies[h].add(head, label: y)
                    loss[h] += crossEntropy(head, label: y)
                }
            }
            start += rows
        }
        return (0..<g).map { HeadScore(tallies[$0], loss: loss[$0] / Double(n)) }
    }
}

/// Softmax cross-entropy of one sample's logits [K] against `label` (log-sum-exp form; NaN when a
/// logit is NaN).
func crossEntropy(_ logits: ArraySlice<Float>, label y: Int) -> Double {
    let mx = logits.max() ?? 0
    var s: Double = 0
    for v in logits { s += Double(expf(v - mx)) }
    return log(s) - Double(logits[logits.startIndex + y] - mx)
}

/// Per-dimension mean and std of x (N,D), for standardising features (a BatchNorm without affine
/// in its eval form, with the statistics of the training part only).
public struct Standardizer: Sendable {
    public var mean: [Float], std: [Float]

    public init(_ x: [Float], width d: Int) {
        let n = x.count / d
        var m = [Double](repeating: 0, count: d), v = m
        for i in 0..<n { for j in 0..<d { m[j] += Double(x[i * d + j]) } }
        for j in 0..<d { m[j] /= Double(max(n, 1)) }
        for i in 0..<n { for j in 0..<d { let e = Double(x[i * d + j]) - m[j]; v[j] += e * e } }
        mean = m.map { Float($0) }
        std = v.map { Float(($0 / Double(max(n, 1)) + 1e-6).squareRoot()) }
    }

    public func apply(_ x: [Float]) -> [Float] {
        let d = mean.count
        var out = x
        for i in 0..<(x.count / d) { for j in 0..<d { out[i * d + j] = (x[i * d + j] - mean[j]) / std[j] } }
        return out
    }
}

/// Rows of a (N,D) matrix.
func gatherRows(_ x: [Float], width d: Int, _ rows: [Int]) -> [Float] {
    var out = [Float](repeating: 0, count: rows.count * d)
    for (r, i) in rows.enumerated() { for j in 0..<d { out[r * d + j] = x[i * d + j] } }
    return out
}

/// A stratified split of indices: about `fraction` of each class held out, by a fixed seed.
func stratifiedHoldout(labels: [Int], fraction: Double, seed: UInt64) -> (fit: [Int], held: [Int]) {
    var rng = RandomStream(seed: seed &+ 0x5151)
    var fit: [Int] = [], held: [Int] = []
    let byClass = Dictionary(grouping: labels.indices, by: { labels[$0] })
    for c in byClass.keys.sorted() {
        var idx = byClass[c]!
        rng.shuffle(&idx)
        let h = idx.count > 1 ? max(1, Int((Double(idx.count) * fraction).rounded())) : 0
        held += idx[0..<h]; fit += idx[h...]
    }
    return (fit.sorted(), held.sorted())
}

/// A stratified k-fold split: each class's images shuffled (fixed seed) and dealt to the folds in
/// turn; part f holds fold f out.
func stratifiedFolds(labels: [Int], folds: Int, seed: UInt64) -> [(fit: [Int], held: [Int])] {
    var rng = RandomStream(seed: seed &+ 0x5151)
    var fold = [Int](repeating: 0, count: labels.count)
    let byClass = Dictionary(grouping: labels.indices, by: { labels[$0] })
    var next = 0
    for c in byClass.keys.sorted() {
        var idx = byClass[c]!
        rng.shuffle(&idx)
        // Continue dealing where the last class stopped so small classes do not all start at fold 0.
        for i in idx { fold[i] = next % folds; next += 1 }
    }
    return (0..<folds).map { f in
        (labels.indices.filter { fold[$0] != f }, labels.indices.filter { fold[$0] == f })
    }
}
