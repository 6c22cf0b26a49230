/// One AdamW update of `count` parameters, as torch.optim.AdamW (decoupled decay, then Adam):
/// p *= shrink; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2; p -= stepSize m / (sqrt(v) / sqrtBC2 + eps).
/// shrink = 1 - lr * wd, stepSize = lr / (1 - b1^t), sqrtBC2 = sqrt(1 - b2^t).
public func adamWUpdate(params p: UnsafeMutablePointer<Float>, grads g: UnsafePointer<Float>,
                        expAvg m: UnsafeMutablePointer<Float>, expAvgSq v: UnsafeMutablePointer<Float>,
                        count: Int, shrink: Float, stepSize: Float, beta1: Float, beta2: Float,
                        sqrtBC2: Float, eps: Float) {
    Profiler.measure(.optimizer) {
        Parallel.forRanges(count, grain: 1 << 14) { r in
            let sh = Vec16(repeating: shrink), st = Vec16(repeating: stepSize)
            let b1 = Vec16(repeating: beta1), c1 = Vec16(repeating: 1 - beta1)
            let b2 = Vec16(repeating: beta2), c2 = Vec16(repeating: 1 - beta2)
            let inv = Vec16(repeating: 1 / sqrtBC2), e = Vec16(repeating: eps)
            var k = r.lowerBound
            while k + 16 <= r.upperBound {
                let gk = load16(g + k)
                let mk = b1 * load16(m + k) + c1 * gk
                let vk = b2 * load16(v + k) + c2 * gk * gk
                store16(mk, m + k)
                store16(vk, v + k)
                store16(load16(p + k) * sh - st * mk / (vk.squareRoot() * inv + e), p + k)
                k += 16
            }
            while k < r.upperBound {
                m[k] = beta1 * m[k] + (1 - beta1) * g[k]
                v[k] = beta2 * v[k] + (1 - beta2) * g[k] * g[k]
                p[k] = p[k] * shrink - stepSize * m[k] / (v[k].squareRoot() / sqrtBC2 + eps)
                k += 1
            }
        }
    }
}
