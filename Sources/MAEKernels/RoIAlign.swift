// RoIAlign over NCHW float32 maps, as torchvision's CPU `roi_align` (which detectron2's ROIAlign
// calls): bilinear samples on a regular grid inside each bin, averaged. Forward and backward share
// one table of sampling points, so the backward scatters exactly the weights the forward gathered.

/// Sizes of a RoIAlign: input (B,C,H,W) and R rois (R,5) of (batch index, x0, y0, x1, y1) in input
/// pixels -> output (R,C,PH,PW).
public struct RoIAlignSize: Equatable, Sendable {
    public var batch, channels, height, width: Int
    public var pooledHeight, pooledWidth: Int
    /// Map cells per input pixel (1 / stride).
    public var spatialScale: Float
    /// Samples per bin side; 0 (or negative) is adaptive: ceil(roi side / pooled side).
    public var samplingRatio: Int
    /// detectron2's ROIAlignV2: shift the scaled roi by -0.5 (pixel centres) and do not clamp its
    /// size to >= 1. False is the legacy Detectron ROIAlign.
    public var aligned: Bool

    public init(batch: Int, channels: Int, height: Int, width: Int, pooledHeight: Int, pooledWidth: Int,
                spatialScale: Float, samplingRatio: Int = 0, aligned: Bool = true) {
        precondition(batch > 0 && channels > 0 && height > 0 && width > 0, "empty RoIAlign input")
        precondition(pooledHeight > 0 && pooledWidth > 0, "RoIAlign output size \(pooledHeight)x\(pooledWidth)")
        precondition(spatialScale > 0, "RoIAlign spatial scale \(spatialScale)")
        self.batch = batch; self.channels = channels; self.height = height; self.width = width
        self.pooledHeight = pooledHeight; self.pooledWidth = pooledWidth
        self.spatialScale = spatialScale; self.samplingRatio = samplingRatio; self.aligned = aligned
    }
}

/// One bilinear sample: four flat plane offsets and their weights (all weights 0 outside the map).
struct RoISample {
    var p1, p2, p3, p4: Int32
    var w1, w2, w3, w4: Float
}

/// The sampling points of one roi, bin by bin ((ph, pw) row-major, then (iy, ix)), with the number
/// of samples per bin and the batch index. torchvision's `pre_calc_for_bilinear_interpolate`: a
/// point outside [-1, H] x [-1, W] contributes nothing; coordinates <= 0 clamp to 0; a point past
/// the last row/column reads that row/column.
func roiSamples(_ roi: UnsafePointer<Float>, _ s: RoIAlignSize) -> (batch: Int, perBin: Int, count: Int, samples: [RoISample]) {
    let offset: Float = s.aligned ? 0.5 : 0
    let startW = roi[1] * s.spatialScale - offset, startH = roi[2] * s.spatialScale - offset
    let endW = roi[3] * s.spatialScale - offset, endH = roi[4] * s.spatialScale - offset
    var roiW = endW - startW, roiH = endH - startH
    if !s.aligned { roiW = max(roiW, 1); roiH = max(roiH, 1) }
    let binH = roiH / Float(s.pooledHeight), binW = roiW / Float(s.pooledWidth)
    let gridH = s.samplingRatio > 0 ? s.samplingRatio : Int((roiH / Float(s.pooledHeight)).rounded(.up))
    let gridW = s.samplingRatio > 0 ? s.samplingRatio : Int((roiW / Float(s.pooledWidth)).rounded(.up))
    let batchIndex = Int(roi[0])
    precondition(batchIndex >= 0 && batchIndex < s.batch, "roi batch index \(roi[0]) outside 0..<\(s.batch)")
    guard gridH > 0 && gridW > 0 else { return (batchIndex, 0, max(gridH * gridW, 1), []) }
    let height = Float(s.height), width = Float(s.width)
    var samples: [RoISample] = []
    samples.reserveCapacity(s.pooledHeight * s.pooledWidth * gridH * gridW)
    for ph in 0..<s.pooledHeight {
        for pw in 0..<s.pooledWidth {
            for iy in 0..<gridH {
                let yy = startH + Float(ph) * binH + (Float(iy) + 0.5) * binH / Float(gridH)
                for ix in 0..<gridW {
                    let xx = startW + Float(pw) * binW + (Float(ix) + 0.5) * binW / Float(gridW)
                    if yy < -1 || yy > height || xx < -1 || xx > width {
                        samples.append(RoISample(p1: 0, p2: 0, p3: 0, p4: 0, w1: 0, w2: 0, w3: 0, w4: 0))
                        continue
                    }
                    var y = max(yy, 0), x = max(xx, 0)
                    var yLow = Int(y), xLow = Int(x), yHigh: Int, xHigh: Int
                    if yLow >= s.height - 1 { yLow = s.height - 1; yHigh = yLow; y = Float(yLow) } else { yHigh = yLow + 1 }
                    if xLow >= s.width - 1 { xLow = s.width - 1; xHigh = xLow; x = Float(xLow) } else { xHigh = xLow + 1 }
                    let ly = y - Float(yLow), lx = x - Float(xLow), hy = 1 - ly, hx = 1 - lx
                    samples.append(RoISample(p1: Int32(yLow * s.width + xLow), p2: Int32(yLow * s.width + xHigh),
                                             p3: Int32(yHigh * s.width + xLow), p4: Int32(yHigh * s.width + xHigh),
                                             w1: hy * hx, w2: hy * lx, w3: ly * hx, w4: ly * lx))
                }
            }
        }
    }
    return (batchIndex, gridH * gridW, max(gridH * gridW, 1), samples)
}

/// out (R,C,PH,PW), input (B,C,H,W), rois (R,5). Writes `out`: each bin the mean of its bilinear
/// samples (0 for a roi with no samples, e.g. an empty aligned roi).
public func roiAlignForward(out: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                            rois: UnsafePointer<Float>, roiCount: Int, size s: RoIAlignSize) {
    let plane = s.height * s.width, bins = s.pooledHeight * s.pooledWidth
    Parallel.forRanges(roiCount) { range in
        for r in range {
            let (b, perBin, count, samples) = roiSamples(rois + 5 * r, s)
            for c in 0..<s.channels {
                let x = input + (b * s.channels + c) * plane, y = out + (r * s.channels + c) * bins
                for bin in 0..<bins {
                    var v: Float = 0
                    for k in (bin * perBin)..<((bin + 1) * perBin) {
                        let p = samples[k]
                        v += p.w1 * x[Int(p.p1)] + p.w2 * x[Int(p.p2)] + p.w3 * x[Int(p.p3)] + p.w4 * x[Int(p.p4)]
                    }
                    y[bin] = v / Float(count)
                }
            }
        }
    }
}

/// dInput (B,C,H,W), dOut (R,C,PH,PW), rois (R,5). Accumulates into dInput: each bin's gradient
/// divided by its sample count and scattered with the forward's bilinear weights. Channels are
/// split over the workers, so rois of the same image never race.
public func roiAlignBackward(dInput: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                             rois: UnsafePointer<Float>, roiCount: Int, size s: RoIAlignSize) {
    let plane = s.height * s.width, bins = s.pooledHeight * s.pooledWidth
    let tables = (0..<roiCount).map { roiSamples(rois + 5 * $0, s) }
    Parallel.forRanges(s.channels) { channels in
        for c in channels {
            for (r, t) in tables.enumerated() where t.perBin > 0 {
                let dx = dInput + (t.batch * s.channels + c) * plane, g = dOut + (r * s.channels + c) * bins
                for bin in 0..<bins {
                    let gb = g[bin], n = Float(t.count)
                    for k in (bin * t.perBin)..<((bin + 1) * t.perBin) {
                        let p = t.samples[k]
                        dx[Int(p.p1)] += gb * p.w1 / n; dx[Int(p.p2)] += gb * p.w2 / n
                        dx[Int(p.p3)] += gb * p.w3 / n; dx[Int(p.p4)] += gb * p.w4 / n
                    }
                }
            }
        }
    }
}
