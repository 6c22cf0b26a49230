/// Fully connected layer, PyTorch's `nn.Linear` layout (weight is [out, in]).
/// out (R,OC) = input (R,IC) . weight (OC,IC)^T + bias (OC)
/// `bf16`: the product takes bf16 input and weight (the weight's packed copy from that cache) and
/// accumulates in fp32 (`Precision.bf16`); nil: fp32 sgemm. The bias is added in fp32 either way.
public func linearForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>?,
                          rows: Int, inDim: Int, outDim: Int, bf16: BF16WeightCache? = nil) {
    if let bias {
        Parallel.forRanges(rows, grain: 64) { range in
            for r in range { (out + r * outDim).update(from: bias, count: outDim) }
        }
    }
    if let bf16 {
        BF16Matmul.product(c: out, a: input, m: rows, k: inDim, n: outDim, weight: weight, layout: .transposed,
                           cache: bf16, accumulate: bias != nil)
        return
    }
    BLAS.gemm(transB: true, m: rows, n: outDim, k: inDim, a: input, lda: inDim,
              b: weight, ldb: inDim, beta: bias == nil ? 0 : 1, c: out, ldc: outDim)
}

/// Accumulates: dInput (R,IC) += dOut (R,OC) . weight (OC,IC); dWeight (OC,IC) += dOut^T . input (R,IC);
/// dBias (OC) += sum over rows of dOut. Pass nil for a gradient that is not needed.
/// `bf16`: both products take bf16 operands with fp32 accumulation, as autocast's backward of a bf16
/// linear layer (the weight's packed copy from that cache); nil: fp32 sgemm. dBias is summed in fp32.
public func linearBackward(dInput: UnsafeMutablePointer<Float>?, dWeight: UnsafeMutablePointer<Float>?,
                           dBias: UnsafeMutablePointer<Float>?,
                           dOut: UnsafePointer<Float>, input: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                           rows: Int, inDim: Int, outDim: Int, bf16: BF16WeightCache? = nil) {
    if let bf16 {
        if let dInput {
            BF16Matmul.product(c: dInput, a: dOut, m: rows, k: outDim, n: inDim, weight: weight, layout: .rowMajor,
                               cache: bf16, accumulate: true)
        }
        if let dWeight {
            BF16Matmul.product(c: dWeight, a: dOut, aLayout: .transposed, b: input, m: outDim, k: rows, n: inDim,
                               accumulate: true)
        }
        if let dBias { sumRows(into: dBias, dOut, rows: rows, width: outDim) }
        return
    }
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
