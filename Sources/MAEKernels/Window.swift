// Window partition of a token map, as detectron2's `window_partition` / `window_unpartition`
// (ViTDet's window-attention blocks): the map is zero-padded at the bottom and right to multiples
// of the window, cut into windows in row-major window order, each window's tokens row-major. The
// padded tokens are NOT masked by the attention; unpartition crops them away again. Every map
// position belongs to exactly one window, so all four functions split over windows with no two
// workers touching the same element.

/// Sizes of a window partition: x (B, H, W, C) -> windows (B * nWindows, w * w, C) with
/// nWindows = (Hp / w) (Wp / w), Hp and Wp the height and width rounded up to multiples of w.
public struct WindowPartitionSize: Equatable, Sendable {
    public var batch, height, width, channels, window: Int

    public init(batch: Int, height: Int, width: Int, channels: Int, window: Int) {
        precondition(batch > 0 && height > 0 && width > 0 && channels > 0 && window > 0,
                     "bad window partition: (\(batch), \(height), \(width), \(channels)) window \(window)")
        self.batch = batch; self.height = height; self.width = width; self.channels = channels; self.window = window
    }

    public var paddedHeight: Int { (height + window - 1) / window * window }
    public var paddedWidth: Int { (width + window - 1) / window * window }
    public var windowsPerImage: Int { (paddedHeight / window) * (paddedWidth / window) }
    /// B * nWindows: the batch the window attention runs over.
    public var windows: Int { batch * windowsPerImage }
    /// w * w: tokens per window.
    public var windowTokens: Int { window * window }
}

/// windows (B * nWindows, w * w, C), input (B, H, W, C). Writes `windows`: zeros at the padding,
/// or with `padding` (C) that row at every padded token (a linear layer's bias there is its output
/// on the zero-padded input, so the layer can run on the map's tokens alone).
public func windowPartitionForward(windows: UnsafeMutablePointer<Float>, input: UnsafePointer<Float>,
                                   size s: WindowPartitionSize, padding: UnsafePointer<Float>? = nil) {
    forEachWindowRow(s) { windowRow, mapRow, valid in
        let c = s.channels
        if valid > 0 { (windows + windowRow).update(from: input + mapRow, count: valid * c) }
        for t in valid..<s.window {
            let row = windows + windowRow + t * c
            if let padding { row.update(from: padding, count: c) } else { row.update(repeating: 0, count: c) }
        }
    }
}

/// dPadding (C) += the sum of dWindows (B * nWindows, w * w, C) over every padded token: the
/// gradient of `windowPartitionForward`'s `padding` row. Split over channels.
public func windowPaddingBackward(dPadding: UnsafeMutablePointer<Float>, dWindows: UnsafePointer<Float>,
                                  size s: WindowPartitionSize) {
    let w = s.window, c = s.channels, across = s.paddedWidth / w
    Parallel.forRanges(c, grain: 64) { channels in
        for index in 0..<s.windows {
            let wy = (index % s.windowsPerImage) / across, wx = index % across
            let valid = max(0, min(w, s.width - wx * w))
            for r in 0..<w {
                let inside = wy * w + r < s.height ? valid : 0
                for t in inside..<w {
                    let g = dWindows + ((index * w + r) * w + t) * c
                    for ch in channels { dPadding[ch] += g[ch] }
                }
            }
        }
    }
}

/// dInput (B, H, W, C), dWindows (B * nWindows, w * w, C). Accumulates into dInput; the padding's
/// gradient is dropped (unpartition of the gradient, as autograd gives for `window_partition`).
public func windowPartitionBackward(dInput: UnsafeMutablePointer<Float>, dWindows: UnsafePointer<Float>,
                                    size s: WindowPartitionSize) {
    forEachWindowRow(s) { windowRow, mapRow, valid in
        addRow(dInput + mapRow, dWindows + windowRow, valid * s.channels)
    }
}

/// out (B, H, W, C), windows (B * nWindows, w * w, C). Writes `out`: the windows put back in
/// place with the padding cropped away.
public func windowUnpartitionForward(out: UnsafeMutablePointer<Float>, windows: UnsafePointer<Float>,
                                     size s: WindowPartitionSize) {
    forEachWindowRow(s) { windowRow, mapRow, valid in
        (out + mapRow).update(from: windows + windowRow, count: valid * s.channels)
    }
}

/// dWindows (B * nWindows, w * w, C), dOut (B, H, W, C). Accumulates into dWindows (the padded
/// tokens get no gradient: they were cropped).
public func windowUnpartitionBackward(dWindows: UnsafeMutablePointer<Float>, dOut: UnsafePointer<Float>,
                                      size s: WindowPartitionSize) {
    forEachWindowRow(s) { windowRow, mapRow, valid in
        addRow(dWindows + windowRow, dOut + mapRow, valid * s.channels)
    }
}

/// Calls body(windowRow, mapRow, valid) for every row of every window: the element offsets of the
/// row's first token in the windows tensor and in the map, and how many of its w tokens lie
/// inside the map (0 for a row wholly in the padding; mapRow is then meaningless).
private func forEachWindowRow(_ s: WindowPartitionSize, _ body: (Int, Int, Int) -> Void) {
    let w = s.window, c = s.channels, across = s.paddedWidth / w
    Parallel.forEach(s.windows) { index in
        let b = index / s.windowsPerImage, wy = (index % s.windowsPerImage) / across, wx = index % across
        let x0 = wx * w, valid = max(0, min(w, s.width - x0))
        for r in 0..<w {
            let y = wy * w + r
            let inside = y < s.height ? valid : 0
            body((index * w + r) * w * c, ((b * s.height + min(y, s.height - 1)) * s.width + x0) * c, inside)
        }
    }
}
