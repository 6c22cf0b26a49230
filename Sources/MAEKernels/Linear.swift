/// Fully connected layer, PyTorch's `nn.Linear` layout (weight is [out, in]).
/// out (R,OC) = input (R,IC) . weight (OC,IC)^T + bias (OC)
public func linearForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                          rows: Int, inDim: Int, outDim: Int) {
    if let bias {
        Parallel.forRanges(rows, grain: 64) { range in
            for r in range { (out + r * outDim).update(from: bias, count: outDim) }
        }
    }
    BLAS.gemm(transB: true, m: rows, n: outDim, k: inDim, a: input, lda: inDim,
              b: weight, ldb: inDim, beta: bias == nil ? 0 : 1, c: out, ldc: outDim)
}

/// Accumulates: dInput (R,IC) += dOut (R,OC) . weight (OC,IC); dWeight (OC,IC) += dOut^T . input (R,IC);
/// dBias (OC) += sum over rows of dOut. Pass nil for a gradient that is not needed.
public func linearBackward(dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>?,
                           dBias: UnsafeMutablePointer<Float>?,
                           dOut: UnsafePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                           rows: Int, inDim: Int, outDim: Int) {
    if let dInput {
        BLAS.gemm(m: rows, n: inDim, k: outDim, a: dOut, lda: outDim, b: weight, ldb: inDim,
                  beta: 1, c: dInput, ldc: inDim)
    }
    if let dWeight {
        BLAS.gemm(transA: true, m: outDim, n: inDim, k: rows, a: dOut, lda: outDim, b: input, ldb: inDim,
                  beta: 1, c: dWeight, ldc: inDim)
    }
    if let dBias { sumRows(into: dBias, dOut, rows: rows, width: outDim) }
}

/// Accumulates: out (W) += sum over rows of input (R,W). Columns are split over the workers so the
/// sum order (row by row) does not depend on the thread count.
public func sumRows(into out: UnsafeMutablePointer<Float>, _ input: UnsafePointer<Float>, rows: Int, width: Int) {
    Parallel.forRanges(width, grain: 256) { cols in
        for r in 0..<rows {
            let src = input + r * width
            for c in cols { out[c] += src[c] }
        }
    }
}
