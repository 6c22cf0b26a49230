import Foundation
import MAEData
import MAEDistributed
import MAEFormats
import MAEKernels
import MAEModels

/// What `mae-eval visualize` takes.
public struct VisualizeOptions: Sendable {
    public var checkpoint = defaultMAECheckpoint
    /// An ImageFolder; nil uses the Shapes val split (generated into `shapesRoot` if needed).
    public var data: URL?
    public var shapesRoot = defaultShapesRoot
    public var maskRatio = 0.75
    public var count = 8
    public var seed: UInt64 = 0
    /// Each cell is scaled up (nearest) to at least this many pixels.
    public var cellSize = 96
    public var out: URL
    /// Model input size (`--img-size`) instead of the checkpoint's.
    public var imgSize: Int?
    /// Compute threads (`--threads`); nil: every core.
    public var threads: Int?
    /// The linear layers' arithmetic (`--precision`).
    public var precision = Precision.fp32

    public init(out: URL) { self.out = out }
}

/// Writes MAE's Figure 2 as a PNG grid, one row per image: the original, the masked input (removed
/// patches grey), the reconstruction, and the reconstruction with the visible patches pasted back.
/// With norm_pix_loss the decoder predicts per-patch normalised pixels, so each predicted patch is
/// de-normalised with its target patch's own mean and variance, as MAE's visualisation does.
/// Images are the first `count` of the dataset in ImageFolder order, center-cropped to the model's size.
/// Returns the grid's (width, height).
@discardableResult
public func runVisualize(_ o: VisualizeOptions) throws -> (width: Int, height: Int) {
    let threads = try ComputeThreads(o.threads); defer { threads.restore() }
    guard o.count > 0 else { throw TaskError.badArgument("--count must be positive") }
    guard (0..<1).contains(o.maskRatio) else { throw TaskError.badArgument("--mask-ratio must be in [0, 1)") }
    // --out is checked (its folder created) before any work, and is never the checkpoint.
    try prepareOutputFolder(o.out.deletingLastPathComponent(), flag: "--out", of: o.out)
    try checkOutputFile(o.out, flag: "--out", inputs: [("--checkpoint", o.checkpoint)])
    var load = LoadOptions(imgSize: o.imgSize, keepDecoder: true)
    load.precision = o.precision
    let loaded = try loadModel(from: o.checkpoint, options: load)
    let model = loaded.model, c = model.config
    let folder: ImageFolder
    if let data = o.data {
        folder = try ImageFolder(root: data)
    } else {
        folder = try ImageFolder(root: try rankZeroFirst { try ShapesDataset.ensure(at: o.shapesRoot) }.val)
    }
    try checkOutputFile(o.out, flag: "--out", inputs: folder.samples.map { ("--data", $0.url) })
    let n = min(o.count, folder.count), s = c.imgSize, l = c.numPatches, pd = c.patchDim
    try model.checkMemory(batch: n, training: false, maskRatio: o.maskRatio)
    // Spread the rows over the classes rather than taking the first class's images only.
    let picks = (0..<n).map { $0 * folder.count / n }
    let originals = try picks.map { try evalTransform(ImageCodec.decode(contentsOf: folder.samples[$0].url), size: s, cropRatio: 1) }
    var images = [Float](repeating: 0, count: n * 3 * s * s)
    images.withUnsafeMutableBufferPointer { p in
        for (i, image) in originals.enumerated() { image.writeNormalizedCHW(into: p.baseAddress! + i * 3 * s * s) }
    }
    var rng = RandomStream(seed: o.seed)
    let noise = (0..<(n * l)).map { _ in rng.nextFloat() }
    let mask = PatchMask(noise: noise, batch: n, numPatches: l, maskRatio: o.maskRatio)
    let pred = images.withUnsafeBufferPointer { x -> [Float] in
        model.forwardDecoder(model.forwardEncoder(images: x.baseAddress!, batch: n, mask: mask)).pred.array
    }
    // A non-finite reconstruction would draw as a blank image: name the image and the stage instead.
    if let bad = NonFiniteCount(pred) {
        let row = bad.first / (l * pd)
        let encoderStage = images.withUnsafeBufferPointer { x -> String? in
            let latent = model.forwardEncoder(images: x.baseAddress!, batch: n).output.array
            let t = (c.numPrefixTokens + l) * c.embedDim
            guard NonFiniteCount(Array(latent[(row * t)..<((row + 1) * t)])) != nil else { return nil }
            return model.firstNonFiniteStage(images: x.baseAddress!, batch: n, row: row)
        }
        throw NonFiniteError.image(folder.samples[picks[row]].url.path, "reconstructed pixels",
                                   NonFiniteCount(Array(pred[(row * l * pd)..<((row + 1) * l * pd)]))!, of: l * pd,
                                   stage: encoderStage ?? "the decoder (the encoder's output is finite)")
    }
    // Target patches (B,L,P*P*C) of the normalised input, for de-normalising and pasting.
    var target = [Float](repeating: 0, count: n * l * pd)
    target.withUnsafeMutableBufferPointer { t in
        images.withUnsafeBufferPointer { x in
            patchify(t.baseAddress!, images: x.baseAddress!, batch: n, channels: c.inChans, imgSize: s, patch: c.patchSize)
        }
    }
    var recon = pred, pasted = pred
    for row in 0..<(n * l) {
        let base = row * pd
        if c.normPixLoss {
            var mean = 0.0, v = 0.0
            for i in 0..<pd { mean += Double(target[base + i]) }
            mean /= Double(pd)
            for i in 0..<pd { v += (Double(target[base + i]) - mean) * (Double(target[base + i]) - mean) }
            let std = (v / Double(pd - 1) + 1e-6).squareRoot()
            for i in 0..<pd { recon[base + i] = Float(Double(pred[base + i]) * std + mean) }
        }
        for i in 0..<pd { pasted[base + i] = mask.mask[row] != 0 ? recon[base + i] : target[base + i] }
    }
    let reconImages = rgbImages(recon, count: n, config: c)
    let pastedImages = rgbImages(pasted, count: n, config: c)
    let maskedImages = originals.enumerated().map { i, image in
        greyed(image, mask: Array(mask.mask[(i * l)..<((i + 1) * l)]), grid: c.gridSize, patch: c.patchSize)
    }

    // The grid: 4 columns with a header row of titles.
    let scale = max(1, (o.cellSize + s - 1) / s), cell = s * scale, gap = 4, header = 16
    let width = 4 * cell + 5 * gap, height = header + n * cell + (n + 1) * gap
    var canvas = Canvas(width: width, height: height)
    for (col, title) in ["original", "masked \(Int((o.maskRatio * 100).rounded()))%", "reconstruction",
                         "recon. + visible"].enumerated() {
        let x = gap + col * (cell + gap)
        canvas.text(title, x: x + (cell - Canvas.textWidth(title)) / 2, y: 5, color: (0, 0, 0))
    }
    for i in 0..<n {
        for (col, image) in [originals[i], maskedImages[i], reconImages[i], pastedImages[i]].enumerated() {
            blit(&canvas, image, x: gap + col * (cell + gap), y: header + gap + i * (cell + gap), scale: scale)
        }
    }
    // Under MPI every rank draws the same figure; rank 0 writes it.
    if Distributed.world.isMain { try ImageCodec.writePNG(canvas.image, to: o.out) }
    return (width, height)
}

/// Patches (B,L,P*P*C) in ImageNet-normalised space -> 8-bit RGB images.
func rgbImages(_ patches: [Float], count n: Int, config c: ViTConfig) -> [RGBImage] {
    let s = c.imgSize, plane = s * s
    var chw = [Float](repeating: 0, count: n * 3 * plane)
    chw.withUnsafeMutableBufferPointer { out in
        patches.withUnsafeBufferPointer { p in
            unpatchify(out.baseAddress!, patches: p.baseAddress!, batch: n, channels: c.inChans, imgSize: s, patch: c.patchSize)
        }
    }
    return (0..<n).map { i in
        var image = RGBImage(width: s, height: s)
        for ch in 0..<3 {
            let m = ImageNetStats.mean[ch], sd = ImageNetStats.std[ch]
            for k in 0..<plane {
                let v = (chw[(i * 3 + ch) * plane + k] * sd + m) * 255
                image.pixels[k * 3 + ch] = UInt8(max(0, min(255, v.rounded())))
            }
        }
        return image
    }
}

/// The image with its removed patches (mask 1) painted mid grey.
func greyed(_ image: RGBImage, mask: [Float], grid g: Int, patch p: Int) -> RGBImage {
    var out = image
    for (patch, m) in mask.enumerated() where m != 0 {
        let gy = patch / g, gx = patch % g
        for y in (gy * p)..<((gy + 1) * p) {
            for x in (gx * p)..<((gx + 1) * p) {
                let k = (y * image.width + x) * 3
                out.pixels[k] = 128; out.pixels[k + 1] = 128; out.pixels[k + 2] = 128
            }
        }
    }
    return out
}

/// Copies `image` scaled up `scale` times (nearest) with its top-left at (x, y).
func blit(_ canvas: inout Canvas, _ image: RGBImage, x: Int, y: Int, scale: Int) {
    for yy in 0..<(image.height * scale) {
        for xx in 0..<(image.width * scale) {
            let k = ((yy / scale) * image.width + xx / scale) * 3
            canvas.set(x + xx, y + yy, (image.pixels[k], image.pixels[k + 1], image.pixels[k + 2]))
        }
    }
}
