import Foundation
import MAEFormats
import MAEKernels
import MAECOCO
import MAEJSON

/// How many images each Shapes split holds.
public struct ShapesCounts: Codable, Sendable, Equatable {
    /// Unlabeled images for MAE pretraining (one pseudo-class folder, ImageFolder-style).
    public var pretrain: Int
    /// Labeled images for supervised pretraining (class sub-folders).
    public var supervised: Int
    /// Classification train and val (class sub-folders).
    public var train: Int
    public var val: Int
    /// Multi-object scenes: PNGs, COCO instances JSON, per-pixel class maps.
    public var scenesTrain: Int
    public var scenesVal: Int

    public init(pretrain: Int, supervised: Int, train: Int, val: Int, scenesTrain: Int, scenesVal: Int) {
        self.pretrain = pretrain; self.supervised = supervised; self.train = train; self.val = val
        self.scenesTrain = scenesTrain; self.scenesVal = scenesVal
    }

    /// About 37k files, some 30 s of generation at 32 px (file creation dominates). The labeled
    /// supervised split is large enough that a small ViT trained on it generalises instead of
    /// memorising (with 2000 images it fitted its training set and probed near chance).
    public static let standard = ShapesCounts(pretrain: 20000, supervised: 10000, train: 4000, val: 2000,
                                              scenesTrain: 400, scenesVal: 200)
}

extension ShapesCounts {
    /// These counts with the splits named in `items` replaced; each item is `SPLIT=N` (`--count`),
    /// SPLIT one of pretrain, supervised, train, val, scenes_train, scenes_val and N >= 0.
    public func setting(_ items: [String]) throws -> ShapesCounts {
        var counts = self
        for item in items {
            let parts = item.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, let n = Int(parts[1]), n >= 0 else {
                throw PathError("--count \(item)", "expected SPLIT=N with N >= 0", period: false)
            }
            switch parts[0] {
            case "pretrain": counts.pretrain = n
            case "supervised": counts.supervised = n
            case "train": counts.train = n
            case "val": counts.val = n
            case "scenes_train": counts.scenesTrain = n
            case "scenes_val": counts.scenesVal = n
            default: throw PathError("--count \(item)", "unknown split \(parts[0])", period: false)
            }
        }
        return counts
    }
}

/// `mae-eval data shapes`: where and how the Shapes dataset is generated.
public struct ShapesOptions: Sendable {
    public var root: URL
    /// Side of the classification images in pixels, 8...1024.
    public var size = 32
    /// Side of the scene images, 16...2048; nil: twice `size`.
    public var sceneSize: Int?
    public var seed: UInt64 = 0
    public var counts = ShapesCounts.standard
    /// Regenerate even when an identical manifest is there.
    public var force = false

    public init(root: URL) { self.root = root }
}

/// Where each split of a generated Shapes dataset lives.
public struct ShapesPaths: Sendable {
    public var root: URL
    public var pretrain: URL { root.appendingPathComponent("pretrain") }
    public var supervised: URL { root.appendingPathComponent("supervised") }
    public var train: URL { root.appendingPathComponent("train") }
    public var val: URL { root.appendingPathComponent("val") }
    public var scenesTrain: URL { root.appendingPathComponent("scenes_train") }
    public var scenesVal: URL { root.appendingPathComponent("scenes_val") }
    public var manifest: URL { root.appendingPathComponent("shapes.json") }
    /// A scenes split's images folder, COCO instances file and class-map folder.
    public static func sceneImages(_ split: URL) -> URL { split.appendingPathComponent("images") }
    public static func sceneInstances(_ split: URL) -> URL { split.appendingPathComponent("instances.json") }
    public static func sceneClassMaps(_ split: URL) -> URL { split.appendingPathComponent("class_maps") }
}

/// The manifest written last into a generated folder; an identical one means the data is there.
public struct ShapesManifest: Codable, Sendable, Equatable {
    public var generator: String
    public var version: Int
    public var seed: UInt64
    public var size: Int
    public var sceneSize: Int
    public var counts: ShapesCounts
    public var classes: [String]
}

/// Shapes: the embedded default dataset, procedural and deterministic from a seed.
///
/// Classification images hold one dominant shape (the label; 56-80% of the image side across) among
/// up to two small distractor shapes of other classes, some occluding it, on faintly textured
/// backgrounds (gradients, noise, stripes, checkers) with clutter strokes and pixel noise; colours
/// are random, so only form tells classes apart. Version 2: version 1 drew smaller labelled shapes
/// on full-contrast textures, where a small ViT trained for minutes probed at 14-20% (chance 10%).
/// Scenes hold 2-6 shapes of every class at varied sizes, overlapping, annotated with boxes,
/// visible-part instance masks and per-pixel class maps (0 = background, 1...K = classes).
public enum ShapesDataset {
    public static let classes = ["circle", "square", "triangle", "star", "ring", "cross",
                                 "hexagon", "heart", "crescent", "lshape"]
    public static let version = 2

    /// Generates every split under `root`, replacing what is there.
    @discardableResult
    public static func generate(to root: URL, size: Int = 32, seed: UInt64 = 0, counts: ShapesCounts = .standard,
                                sceneSize: Int? = nil) throws -> ShapesPaths {
        guard size >= 8, size <= 1024 else { throw PathError(root, "cannot hold Shapes of size \(size) (use 8...1024)", period: false) }
        let sceneSize = sceneSize ?? 2 * size
        // A scene holds several shapes of a tenth of its side and more: below 16 px they are specks.
        guard sceneSize >= 16, sceneSize <= 2048 else {
            throw PathError(root, "cannot hold Shapes scenes of size \(sceneSize) (use --scene-size 16...2048)", period: false)
        }
        let paths = ShapesPaths(root: root)
        let fm = FileManager.default
        try? fm.removeItem(at: paths.manifest)
        for split in [paths.pretrain, paths.supervised, paths.train, paths.val, paths.scenesTrain, paths.scenesVal] {
            try? fm.removeItem(at: split)
        }
        do {
            try fm.createDirectory(at: paths.pretrain.appendingPathComponent("unlabeled"), withIntermediateDirectories: true)
            for split in [paths.supervised, paths.train, paths.val] {
                for name in classes { try fm.createDirectory(at: split.appendingPathComponent(name), withIntermediateDirectories: true) }
            }
            for split in [paths.scenesTrain, paths.scenesVal] {
                try fm.createDirectory(at: ShapesPaths.sceneImages(split), withIntermediateDirectories: true)
                try fm.createDirectory(at: ShapesPaths.sceneClassMaps(split), withIntermediateDirectories: true)
            }
        } catch {
            throw PathError(root, "cannot be written (\(describeCause(error)))", period: false)
        }
        // Each split draws from its own streams (the epoch slot of RandomStream), each image from its own.
        try classification(paths.pretrain, stream: 1, count: counts.pretrain, size: size, seed: seed, labeled: false)
        try classification(paths.supervised, stream: 2, count: counts.supervised, size: size, seed: seed, labeled: true)
        try classification(paths.train, stream: 3, count: counts.train, size: size, seed: seed, labeled: true)
        try classification(paths.val, stream: 4, count: counts.val, size: size, seed: seed, labeled: true)
        try scenes(paths.scenesTrain, stream: 5, count: counts.scenesTrain, size: sceneSize, seed: seed)
        try scenes(paths.scenesVal, stream: 6, count: counts.scenesVal, size: sceneSize, seed: seed)
        let manifest = ShapesManifest(generator: "mae-eval shapes", version: version, seed: seed, size: size,
                                      sceneSize: sceneSize, counts: counts, classes: classes)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // Tens of thousands of small files are flushed once here (each fsync'd alone took minutes),
        // before the manifest that marks the dataset complete.
        sync()
        try writeAtomically(try encoder.encode(manifest), to: paths.manifest)
        return paths
    }

    /// The dataset at `root`, generated only if its manifest is missing or differs.
    @discardableResult
    public static func ensure(at root: URL, size: Int = 32, seed: UInt64 = 0, counts: ShapesCounts = .standard,
                              sceneSize: Int? = nil) throws -> ShapesPaths {
        let paths = ShapesPaths(root: root)
        let wanted = ShapesManifest(generator: "mae-eval shapes", version: version, seed: seed, size: size,
                                    sceneSize: sceneSize ?? 2 * size, counts: counts, classes: classes)
        if let data = try? Data(contentsOf: paths.manifest),
           let existing = try? JSONDecoder().decode(ShapesManifest.self, from: data), existing == wanted {
            return paths
        }
        return try generate(to: root, size: size, seed: seed, counts: counts, sceneSize: sceneSize)
    }

    /// The dataset `o` describes: generated afresh with `o.force`, else only when its manifest differs.
    @discardableResult
    public static func make(_ o: ShapesOptions) throws -> ShapesPaths {
        o.force
            ? try generate(to: o.root, size: o.size, seed: o.seed, counts: o.counts, sceneSize: o.sceneSize)
            : try ensure(at: o.root, size: o.size, seed: o.seed, counts: o.counts, sceneSize: o.sceneSize)
    }

    // MARK: - Splits

    /// Runs `body(i)` for i in 0..<count over all cores in static chunks, keeping the first error.
    static func parallel(_ count: Int, _ body: (Int) throws -> Void) throws {
        let chunks = min(count, max(1, ProcessInfo.processInfo.activeProcessorCount) * 4)
        guard chunks > 0 else { return }
        let lock = NSLock()
        var firstError: Error?
        DispatchQueue.concurrentPerform(iterations: chunks) { c in
            for i in (count * c / chunks)..<(count * (c + 1) / chunks) {
                do { try body(i) } catch {
                    lock.lock(); if firstError == nil { firstError = error }; lock.unlock()
                    return
                }
            }
        }
        if let firstError { throw firstError }
    }

    static func classification(_ folder: URL, stream: Int, count: Int, size: Int, seed: UInt64, labeled: Bool) throws {
        try parallel(count) { i in
            var rng = RandomStream(seed: seed, epoch: stream, index: i)
            // Classes in turn, so every split is balanced and every class folder has images.
            let (image, label) = classificationImage(size: size, label: i % classes.count, rng: &rng)
            let sub = labeled ? classes[label] : "unlabeled"
            let name = labeled ? String(format: "%@_%06d.png", classes[label], i) : String(format: "%06d.png", i)
            try ImageCodec.writePNG(image, to: folder.appendingPathComponent(sub).appendingPathComponent(name), durable: false)
        }
    }

    static func scenes(_ folder: URL, stream: Int, count: Int, size: Int, seed: UInt64) throws {
        var perImage = [[COCOAnnotation]](repeating: [], count: count)
        let lock = NSLock()
        try parallel(count) { i in
            var rng = RandomStream(seed: seed, epoch: stream, index: i)
            let scene = sceneImage(size: size, rng: &rng)
            let name = String(format: "%06d.png", i)
            try ImageCodec.writePNG(scene.image, to: ShapesPaths.sceneImages(folder).appendingPathComponent(name), durable: false)
            try LabelMapCodec.writePNG(scene.classMap, to: ShapesPaths.sceneClassMaps(folder).appendingPathComponent(name), durable: false)
            lock.lock(); perImage[i] = scene.annotations; lock.unlock()
        }
        var images: [COCOImage] = [], annotations: [COCOAnnotation] = []
        for i in 0..<count {
            images.append(COCOImage(id: i + 1, width: size, height: size, fileName: String(format: "%06d.png", i)))
            for var a in perImage[i] {
                a.id = annotations.count + 1
                a.imageId = i + 1
                annotations.append(a)
            }
        }
        let categories = classes.enumerated().map { COCOCategory(id: $0 + 1, name: $1, supercategory: "shape") }
        let file = COCODataset(images: images, annotations: annotations, categories: categories)
        try writeAtomically(Data(file.jsonValue().serialized().utf8), to: ShapesPaths.sceneInstances(folder), durable: false)
    }

    // MARK: - Images

    /// One classification image: a dominant shape of class `label` among smaller distractors.
    static func classificationImage(size: Int, label: Int, rng: inout RandomStream) -> (RGBImage, Int) {
        var canvas = Canvas(size: size, rng: &rng)
        let s = Double(size)
        let main = Placement.random(cls: label, radius: s * rng.uniform(0.28, 0.4), size: s, canvas: canvas,
                                    keepInside: 0.85, rng: &rng)
        var distractors: [Placement] = []
        for _ in 0..<rng.below(3) {
            var cls = rng.below(classes.count - 1)
            if cls >= label { cls += 1 }
            distractors.append(Placement.random(cls: cls, radius: s * rng.uniform(0.07, 0.12), size: s, canvas: canvas, rng: &rng))
        }
        // Some distractors go behind the main shape, others in front of it (occluding it).
        let behind = rng.below(distractors.count + 1)
        for d in distractors.prefix(behind) { canvas.draw(d, owner: -1) }
        canvas.draw(main, owner: 0)
        for d in distractors.dropFirst(behind) { canvas.draw(d, owner: -1) }
        canvas.clutter(rng: &rng)
        return (canvas.finish(rng: &rng), label)
    }

    /// One scene: 2-6 shapes of any class, overlapping, with their visible masks.
    static func sceneImage(size: Int, rng: inout RandomStream) -> (image: RGBImage, classMap: LabelMap, annotations: [COCOAnnotation]) {
        var canvas = Canvas(size: size, rng: &rng)
        let s = Double(size)
        var placed: [Placement] = []
        for k in 0..<(2 + rng.below(5)) {
            let p = Placement.random(cls: rng.below(classes.count), radius: s * rng.uniform(0.07, 0.2), size: s,
                                     canvas: canvas, rng: &rng)
            canvas.draw(p, owner: k)
            placed.append(p)
        }
        canvas.clutter(rng: &rng)
        let image = canvas.finish(rng: &rng)
        var classMap = [Int32](repeating: 0, count: size * size)
        var annotations: [COCOAnnotation] = []
        for (k, p) in placed.enumerated() {
            var mask = [UInt8](repeating: 0, count: size * size)
            var area = 0, x0 = size, y0 = size, x1 = -1, y1 = -1
            for y in 0..<size {
                for x in 0..<size where canvas.owner[y * size + x] == k {
                    mask[y * size + x] = 1
                    classMap[y * size + x] = Int32(p.cls + 1)
                    area += 1
                    x0 = min(x0, x); x1 = max(x1, x); y0 = min(y0, y); y1 = max(y1, y)
                }
            }
            guard area > 0 else { continue }   // fully hidden: not an object of this image
            // A polygon when the whole shape shows and it is one simple outline; RLE otherwise.
            let whole = area == canvas.fullArea[k]
            let inside = p.outline().allSatisfy { $0.x >= 0 && $0.y >= 0 && $0.x <= s && $0.y <= s }
            let segmentation: COCOSegmentation
            if whole && inside && Shape.isPolygon(p.cls) {
                segmentation = .polygons([p.outline().flatMap { [($0.x * 100).rounded() / 100, ($0.y * 100).rounded() / 100] }])
            } else {
                segmentation = .rle(RLE(rowMajorMask: mask, height: size, width: size))
            }
            annotations.append(COCOAnnotation(
                id: 0, imageId: 0, categoryId: p.cls + 1,
                bbox: [Double(x0), Double(y0), Double(x1 - x0 + 1), Double(y1 - y0 + 1)],
                area: Double(area), segmentation: segmentation))
        }
        return (image, LabelMap(width: size, height: size, labels: classMap), annotations)
    }
}

// MARK: - Geometry

/// The shape classes, as inside tests in a unit frame (radius 1, y down).
enum Shape {
    static func regular(_ n: Int, radius: Double = 1, phase: Double = -Double.pi / 2) -> [(x: Double, y: Double)] {
        (0..<n).map { k in
            let a = phase + 2 * Double.pi * Double(k) / Double(n)
            return (radius * cos(a), radius * sin(a))
        }
    }

    /// Outlines of the classes drawn as polygons (ring and crescent are not simple polygons).
    static let outlines: [[(x: Double, y: Double)]?] = {
        var o = [[(x: Double, y: Double)]?](repeating: nil, count: ShapesDataset.classes.count)
        o[0] = regular(48)
        o[1] = [(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)]
        o[2] = regular(3).map { ($0.x, $0.y + 0.2) }
        o[3] = (0..<10).map { k in
            let r = k % 2 == 0 ? 1.0 : 0.42, a = -Double.pi / 2 + Double.pi * Double(k) / 5
            return (r * cos(a), r * sin(a))
        }
        o[5] = [(-0.28, -0.9), (0.28, -0.9), (0.28, -0.28), (0.9, -0.28), (0.9, 0.28), (0.28, 0.28),
                (0.28, 0.9), (-0.28, 0.9), (-0.28, 0.28), (-0.9, 0.28), (-0.9, -0.28), (-0.28, -0.28)]
        o[6] = regular(6, phase: 0)
        o[7] = (0..<48).map { k in
            // The classic parametric heart, scaled into the unit disc, point down (y grows down).
            let t = 2 * Double.pi * Double(k) / 48
            let x = 16 * pow(sin(t), 3)
            let y = 13 * cos(t) - 5 * cos(2 * t) - 2 * cos(3 * t) - cos(4 * t)
            return (x / 17, -(y + 2.5) / 17)
        }
        o[9] = [(-0.8, -0.85), (-0.25, -0.85), (-0.25, 0.3), (0.8, 0.3), (0.8, 0.85), (-0.8, 0.85)]
        return o
    }()

    static func isPolygon(_ cls: Int) -> Bool { outlines[cls] != nil }

    @inline(__always)
    static func inside(_ cls: Int, _ u: Double, _ v: Double) -> Bool {
        switch cls {
        case 0:
            // Inside test on the true disc; its 48-gon outline is only for the COCO polygon.
            return u * u + v * v <= 1
        case 4:
            let r2 = u * u + v * v
            return r2 <= 1 && r2 >= 0.55 * 0.55
        case 8:
            return u * u + v * v <= 1 && (u - 0.45) * (u - 0.45) + (v + 0.1) * (v + 0.1) > 0.8 * 0.8
        default:
            return pointInPolygon(outlines[cls]!, u, v)
        }
    }

    static func pointInPolygon(_ poly: [(x: Double, y: Double)], _ x: Double, _ y: Double) -> Bool {
        var inside = false
        var j = poly.count - 1
        for i in 0..<poly.count {
            let (xi, yi) = poly[i], (xj, yj) = poly[j]
            if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi { inside.toggle() }
            j = i
        }
        return inside
    }
}

typealias Color = (r: Double, g: Double, b: Double)

func randomColor(_ rng: inout RandomStream) -> Color { (rng.unit(), rng.unit(), rng.unit()) }

/// a + (b - a) t per channel.
func blend(_ a: Color, _ b: Color, _ t: Double) -> Color {
    (a.r + (b.r - a.r) * t, a.g + (b.g - a.g) * t, a.b + (b.b - a.b) * t)
}

/// One shape instance: class, pose and fill.
struct Placement {
    var cls: Int
    var cx: Double, cy: Double, radius: Double
    /// Rotation, with its cosine and sine computed once.
    var angle: Double, cosA: Double, sinA: Double
    var color: Color, color2: Color
    /// 0 solid, 1 gradient, 2 stripes (in the shape's own frame).
    var fill: Int
    var stripePeriod: Double

    /// A random pose whose centre keeps most of the shape inside an image of side `size`, in a
    /// colour that stands out from the background around it.
    /// `keepInside` is the part of the radius that always stays inside the image.
    static func random(cls: Int, radius: Double, size: Double, canvas: Canvas, keepInside: Double = 0.6,
                       rng: inout RandomStream) -> Placement {
        let margin = min(radius * keepInside, size / 2)
        let cx = rng.uniform(margin, size - margin), cy = rng.uniform(margin, size - margin)
        let around = canvas.color(atX: Int(cx), y: Int(cy))
        var color = randomColor(&rng)
        for _ in 0..<16 {
            if abs(color.r - around.r) + abs(color.g - around.g) + abs(color.b - around.b) > 0.8 { break }
            color = randomColor(&rng)
        }
        let fill = rng.chance(0.6) ? 0 : 1 + rng.below(2)
        var color2 = color
        if fill != 0 {
            color2 = (min(1, max(0, color.r + rng.uniform(-0.4, 0.4))), min(1, max(0, color.g + rng.uniform(-0.4, 0.4))),
                      min(1, max(0, color.b + rng.uniform(-0.4, 0.4))))
        }
        let angle = rng.uniform(0, 2 * Double.pi)
        return Placement(cls: cls, cx: cx, cy: cy, radius: radius, angle: angle, cosA: cos(angle), sinA: sin(angle),
                         color: color, color2: color2, fill: fill, stripePeriod: rng.uniform(0.25, 0.6))
    }

    /// Image coordinates -> the shape's unit frame.
    @inline(__always)
    func local(_ x: Double, _ y: Double) -> (Double, Double) {
        let dx = (x - cx) / radius, dy = (y - cy) / radius
        return (dx * cosA + dy * sinA, -dx * sinA + dy * cosA)
    }

    /// The polygon outline in image coordinates (polygon classes only).
    func outline() -> [(x: Double, y: Double)] {
        let c = cosA, s = sinA
        return (Shape.outlines[cls] ?? []).map { (cx + radius * ($0.x * c - $0.y * s), cy + radius * ($0.x * s + $0.y * c)) }
    }

    func color(u: Double, v: Double) -> Color {
        let t: Double
        switch fill {
        case 1: t = (u + 1) / 2
        case 2: t = (v / stripePeriod).rounded(.down).truncatingRemainder(dividingBy: 2) == 0 ? 0 : 1
        default: return color
        }
        let k = min(1, max(0, t))
        return blend(color, color2, k)
    }
}

/// A float RGB canvas with a textured background, shapes composited with anti-aliased edges,
/// and which drawn shape owns each pixel.
struct Canvas {
    let size: Int
    var rgb: [Double]          // (H, W, 3) in 0...1
    var owner: [Int]           // (H, W): index of the topmost owned shape covering >= half the pixel, or -1
    var fullArea: [Int: Int] = [:]

    init(size: Int, rng: inout RandomStream) {
        self.size = size
        rgb = [Double](repeating: 0, count: size * size * 3)
        owner = [Int](repeating: -1, count: size * size)
        background(rng: &rng)
    }

    func color(atX x: Int, y: Int) -> Color {
        let i = (min(max(y, 0), size - 1) * size + min(max(x, 0), size - 1)) * 3
        return (rgb[i], rgb[i + 1], rgb[i + 2])
    }

    mutating func set(_ x: Int, _ y: Int, _ c: Color, alpha: Double = 1) {
        let i = (y * size + x) * 3
        rgb[i] += (c.r - rgb[i]) * alpha
        rgb[i + 1] += (c.g - rgb[i + 1]) * alpha
        rgb[i + 2] += (c.b - rgb[i + 2]) * alpha
    }

    /// Gradients, radial gradients, value noise, stripes, checkers, or a flat colour.
    mutating func background(rng: inout RandomStream) {
        let s = Double(size)
        // Textures are a faint second colour over the first, so the shapes stand out from them.
        let a = randomColor(&rng), far = randomColor(&rng)
        let contrast = rng.uniform(0.15, 0.5)
        func faint(_ c: Color) -> Color { blend(a, c, contrast) }
        let b = faint(far)
        let kind = rng.below(6)
        let angle = rng.uniform(0, 2 * Double.pi), period = s * rng.uniform(0.08, 0.3)
        let (ox, oy) = (rng.uniform(0, s), rng.uniform(0, s))
        let grid = 3 + rng.below(4)
        var noise: [Color] = []
        for _ in 0..<((grid + 1) * (grid + 1)) { noise.append(faint(randomColor(&rng))) }
        let ca = cos(angle), sa = sin(angle)
        for y in 0..<size {
            for x in 0..<size {
                let px = Double(x) + 0.5, py = Double(y) + 0.5
                let along = (px - ox) * ca + (py - oy) * sa
                let across = -(px - ox) * sa + (py - oy) * ca
                var t: Double
                switch kind {
                case 0: t = along / s + 0.5
                case 1: t = ((px - ox) * (px - ox) + (py - oy) * (py - oy)).squareRoot() / s
                case 2:
                    let gx = px / s * Double(grid), gy = py / s * Double(grid)
                    let ix = min(Int(gx), grid - 1), iy = min(Int(gy), grid - 1)
                    let fx = gx - Double(ix), fy = gy - Double(iy)
                    func n(_ i: Int, _ j: Int) -> Color { noise[j * (grid + 1) + i] }
                    let c00 = n(ix, iy), c10 = n(ix + 1, iy), c01 = n(ix, iy + 1), c11 = n(ix + 1, iy + 1)
                    func mix(_ p: Double, _ q: Double, _ r: Double, _ w: Double) -> Double {
                        (p * (1 - fx) + q * fx) * (1 - fy) + (r * (1 - fx) + w * fx) * fy
                    }
                    set(x, y, (mix(c00.r, c10.r, c01.r, c11.r), mix(c00.g, c10.g, c01.g, c11.g), mix(c00.b, c10.b, c01.b, c11.b)))
                    continue
                case 3: t = 0.5 + 0.5 * sin(2 * Double.pi * along / period)
                case 4:
                    let i = Int((along / period).rounded(.down)) + Int((across / period).rounded(.down))
                    t = i & 1 == 0 ? 0 : 1
                default: t = 0
                }
                t = min(1, max(0, t))
                set(x, y, blend(a, b, t))
            }
        }
    }

    /// Composites `p` with 4 x 4 supersampled coverage. `owner` >= 0 records which pixels the
    /// shape covers (at least half) and takes them over from shapes below; -1 draws a distractor
    /// that takes pixels from nobody's record but paints over them.
    mutating func draw(_ p: Placement, owner id: Int) {
        let reach = p.radius * 1.2
        let x0 = max(0, Int(p.cx - reach)), x1 = min(size - 1, Int(p.cx + reach))
        let y0 = max(0, Int(p.cy - reach)), y1 = min(size - 1, Int(p.cy + reach))
        guard x0 <= x1, y0 <= y1 else { return }
        var area = 0
        for y in y0...y1 {
            for x in x0...x1 {
                var hits = 0
                for sy in 0..<4 {
                    for sx in 0..<4 {
                        let (u, v) = p.local(Double(x) + (Double(sx) + 0.5) / 4, Double(y) + (Double(sy) + 0.5) / 4)
                        if Shape.inside(p.cls, u, v) { hits += 1 }
                    }
                }
                guard hits > 0 else { continue }
                let (u, v) = p.local(Double(x) + 0.5, Double(y) + 0.5)
                set(x, y, p.color(u: u, v: v), alpha: Double(hits) / 16)
                if hits >= 8 {
                    owner[y * size + x] = id
                    if id >= 0 { area += 1 }
                }
            }
        }
        if id >= 0 { fullArea[id] = area }
    }

    /// Thin strokes and specks that belong to no object.
    mutating func clutter(rng: inout RandomStream) {
        let s = Double(size)
        for _ in 0..<rng.below(3) {
            let c = randomColor(&rng)
            let (x0, y0) = (rng.uniform(0, s), rng.uniform(0, s))
            let (x1, y1) = (rng.uniform(0, s), rng.uniform(0, s))
            let steps = Int(max(abs(x1 - x0), abs(y1 - y0)) * 2) + 1
            for k in 0...steps {
                let t = Double(k) / Double(steps)
                let x = Int(x0 + (x1 - x0) * t), y = Int(y0 + (y1 - y0) * t)
                if x >= 0 && x < size && y >= 0 && y < size { set(x, y, c, alpha: 0.6) }
            }
        }
    }

    /// Adds pixel noise and rounds to bytes.
    func finish(rng: inout RandomStream) -> RGBImage {
        let sigma = rng.uniform(0, 0.04)
        var out = [UInt8](repeating: 0, count: rgb.count)
        for i in 0..<rgb.count {
            // Sum of three uniforms: a cheap bell-shaped noise with standard deviation `sigma`.
            let n = (rng.unit() + rng.unit() + rng.unit() - 1.5) * 2 * sigma
            out[i] = UInt8(min(255, max(0, ((rgb[i] + n) * 255).rounded())))
        }
        return RGBImage(width: size, height: size, pixels: out)
    }
}
