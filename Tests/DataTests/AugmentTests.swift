import Foundation
import MAEData
import MAEKernels
import TestSupport
import XCTest

/// The fixtures of scripts/make_augment_fixtures.py (timm 1.0.31, Pillow 13).
enum AugmentFixtures {
    static func index() throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.url("augment.json"))) as! [String: Any]
    }
    static func cases(_ key: String) throws -> [[String: Any]] { try index()[key] as! [[String: Any]] }
    static func image(_ name: String, width: Int, height: Int) throws -> RGBImage {
        RGBImage(width: width, height: height, pixels: try Fixtures.bytes(name))
    }
}

final class RandAugmentTests: XCTestCase {
    /// Every RandAugment op on PIL images, with timm's fill and both interpolations, byte for byte.
    func testOpsMatchTimmOnPIL() throws {
        let size = try AugmentFixtures.index()["size"] as! [Int]
        let (w, h) = (size[0], size[1])
        let sources = ["src": try AugmentFixtures.image("aug_src.rgb", width: w, height: h),
                       "dull": try AugmentFixtures.image("aug_dull.rgb", width: w, height: h)]
        let cases = try AugmentFixtures.cases("ops")
        XCTAssertEqual(cases.count, 65)
        for c in cases {
            let name = c["name"] as! String
            let op = RandAugment.Op(rawValue: c["op"] as! String)!
            let interpolation = (c["interpolation"] as? String).flatMap(PILInterpolation.init(rawValue:)) ?? .bicubic
            let out = op.apply(sources[c["source"] as! String]!, argument: (c["arg"] as? Double) ?? 0,
                               interpolation: interpolation, fill: .imageNetMean)
            assertBytesEqual(out.pixels, try Fixtures.bytes(name + ".rgb"), name)
        }
    }

    /// timm's level -> argument functions (random sign fixed to +) over magnitudes 0...10.
    func testLevelsMatchTimm() throws {
        for c in try AugmentFixtures.cases("levels") {
            let op = RandAugment.Op(rawValue: c["op"] as! String)!, m = c["magnitude"] as! Double
            let expected = c["args"] as! [Double]
            guard let level = op.level(m) else {
                XCTAssertEqual(expected, [], "\(op) at \(m)")
                continue
            }
            XCTAssertEqual(op.argument(level: level, negative: false), expected[0], accuracy: 1e-12, "\(op) at \(m)")
        }
        // The sign: rotation negates, the increasing enhancements mirror about 1 and stop at 0.1.
        XCTAssertEqual(RandAugment.Op.rotate.argument(level: 27, negative: true), -27)
        XCTAssertEqual(RandAugment.Op.colorIncreasing.argument(level: 0.81, negative: true), 0.19, accuracy: 1e-12)
        XCTAssertEqual(RandAugment.Op.colorIncreasing.argument(level: 0.95, negative: true), 0.1)
    }

    func testConfigString() throws {
        let ra = try RandAugment(config: "rand-m9-mstd0.5-inc1")
        XCTAssertEqual(ra, RandAugment())
        XCTAssertEqual(ra.ops.map(\.rawValue), ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing",
                                                "SolarizeIncreasing", "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing",
                                                "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
                                                "TranslateXRel", "TranslateYRel"])
        let other = try RandAugment(config: "rand-n3-m7-mstd101-p0.8")
        XCTAssertEqual(other.layers, 3); XCTAssertEqual(other.magnitude, 7); XCTAssertEqual(other.magnitudeStd, .infinity)
        XCTAssertEqual(other.probability, 0.8); XCTAssertEqual(other.ops, RandAugment.Op.standard)
        XCTAssertThrowsError(try RandAugment(config: "rand-m9-tweights")) { XCTAssertTrue("\($0)".contains("rand-m9-tweights")) }
        XCTAssertThrowsError(try RandAugment(config: "augmix-m5"))
    }

    /// The sampling: about half the drawn ops run; with prob 1 and mstd 0 an op always runs at its
    /// fixed argument, with a random sign for signed ops.
    func testSamplingSemantics() {
        let src = RGBImage(width: 8, height: 6, pixels: (0..<144).map { UInt8(($0 * 37) % 256) })
        var rng = RandomStream(seed: 4)
        let ra = RandAugment(ops: [.invert], layers: 1)
        var changed = 0
        for _ in 0..<4000 where ra.apply(src, rng: &rng) != src { changed += 1 }
        XCTAssertEqual(Double(changed) / 4000, 0.5, accuracy: 0.03)
        // Fixed magnitude 9 brightness: factor 1.81 or 0.19, each about half the time.
        let fixed = RandAugment(ops: [.brightnessIncreasing], layers: 1, magnitudeStd: 0, probability: 1)
        let up = src.brightnessEnhanced(1 + 0.9 * 0.9), down = src.brightnessEnhanced(max(0.1, 1 - 0.9 * 0.9))
        var ups = 0
        for _ in 0..<2000 {
            let out = fixed.apply(src, rng: &rng)
            XCTAssertTrue(out == up || out == down)
            if out == up { ups += 1 }
        }
        XCTAssertEqual(Double(ups) / 2000, 0.5, accuracy: 0.04)
        // Magnitude noise N(9, 0.5) clipped at 10: posterize keeps 1 bit (m < 10), 0 bits at m = 10.
        let noisy = RandAugment(ops: [.posterizeIncreasing], layers: 1, probability: 1)
        var black = 0
        for _ in 0..<4000 where noisy.apply(src, rng: &rng).pixels.allSatisfy({ $0 == 0 }) { black += 1 }
        XCTAssertEqual(Double(black) / 4000, 0.0228, accuracy: 0.01)   // P(N(9, 0.5) >= 10)
    }

    /// The fine-tuning pipeline through the loader, with random erasing after normalisation.
    func testFinetuneTransformInLoader() throws {
        let root = temporaryFolder()
        let paths = try ShapesDataset.generate(to: root, size: 16, seed: 2,
                                               counts: ShapesCounts(pretrain: 0, supervised: 0, train: 10, val: 0, scenesTrain: 0, scenesVal: 0))
        let transform = MAETransform.finetune(RandomResizedCrop(size: 12), randAugment: RandAugment())
        func run(workers: Int) throws -> [Batch] {
            let loader = DataLoader(source: try ImageFolder(root: paths.train), transform: transform,
                                    tensorTransform: RandomErasing(probability: 1), batchSize: 4, seed: 3, workers: workers)
            let it = loader.epoch(0)
            var out: [Batch] = []
            while let b = try it.next() { out.append(b) }
            return out
        }
        let a = try run(workers: 0), b = try run(workers: 2)
        XCTAssertEqual(a.map(\.images), b.map(\.images))
        XCTAssertEqual(a.map(\.count), [4, 4, 2])
        XCTAssertEqual(transform.size, 12)
    }
}

final class MixingTests: XCTestCase {
    /// timm's Mixup(mixup 0.8, cutmix 1.0, prob 1, switch 0.5, batch mode, smoothing 0.1) on float
    /// batches, given the lambda and box centre timm drew: images and targets exactly.
    func testMixupAndCutMixMatchTimm() throws {
        var sawCutmix = false, sawMixup = false
        for c in try AugmentFixtures.cases("mixup") {
            let name = c["name"] as! String
            let (ch, h, w, k) = (c["channels"] as! Int, c["height"] as! Int, c["width"] as! Int, c["classes"] as! Int)
            let cutmix = c["cutmix"] as! Bool
            cutmix ? (sawCutmix = true) : (sawMixup = true)
            let draw = Mixup.Draw(lambda: c["lam"] as! Double,
                                  cutmixCenter: cutmix ? (c["cy"] as! Int, c["cx"] as! Int) : nil)
            var images = try Fixtures.floats(name + "_in.f32")
            let result = Mixup(classes: k).mix(&images, labels: c["labels"] as! [Int], channels: ch, height: h, width: w, draw: draw)
            assertClose(images, try Fixtures.floats(name + "_out.f32"), rtol: 0, atol: 0, name)
            assertClose(result.targets, try Fixtures.floats(name + "_target.f32"), rtol: 0, atol: 0, name + " targets")
        }
        XCTAssertTrue(sawCutmix && sawMixup)
    }

    /// rand_bbox by hand: 10 x 8 image, lambda 0.75 gives a 5 x 4 box (int(10 * 0.5), int(8 * 0.5));
    /// centred at (1, 7) it is clipped to rows 0..<3, columns 5..<8, so lambda becomes 1 - 9 / 80.
    func testCutmixBoxByHand() {
        let box = Mixup.cutmixBox(height: 10, width: 8, lambda: 0.75, center: (1, 7))
        XCTAssertEqual(box.yl, 0); XCTAssertEqual(box.yh, 4); XCTAssertEqual(box.xl, 5); XCTAssertEqual(box.xh, 8)
        XCTAssertEqual(box.lambda, 1 - 12.0 / 80, accuracy: 1e-15)
        let smoothed = Mixup(classes: 4).targets(labels: [2, 0], lambda: 1)
        XCTAssertEqual(smoothed, [0.025, 0.025, 0.925, 0.025, 0.925, 0.025, 0.025, 0.025])
    }

    /// The draws: Beta means, the cutmix/mixup split, and lambda in [0, 1].
    func testDrawStatistics() {
        var rng = RandomStream(seed: 11)
        let mix = Mixup(classes: 10)
        var cut = 0, sumMix = 0.0, nMix = 0, sumSqMix = 0.0
        for _ in 0..<20000 {
            let d = mix.draw(height: 16, width: 16, rng: &rng)
            XCTAssertTrue(d.lambda >= 0 && d.lambda <= 1)
            if let c = d.cutmixCenter {
                cut += 1
                XCTAssertTrue((0..<16).contains(c.y) && (0..<16).contains(c.x))
            } else {
                sumMix += d.lambda; sumSqMix += d.lambda * d.lambda; nMix += 1
            }
        }
        XCTAssertEqual(Double(cut) / 20000, 0.5, accuracy: 0.02)
        // Beta(0.8, 0.8): mean 1/2, variance 1 / (4 * (2 * 0.8 + 1)) = 0.0962.
        let mean = sumMix / Double(nMix)
        XCTAssertEqual(mean, 0.5, accuracy: 0.01)
        XCTAssertEqual(sumSqMix / Double(nMix) - mean * mean, 0.0962, accuracy: 0.005)
    }

    /// Random erasing: the probability, the box bounds, and unit-normal noise inside, untouched outside.
    func testRandomErasing() {
        let re = RandomErasing()
        var rng = RandomStream(seed: 5)
        var erased = 0
        for _ in 0..<4000 {
            let boxes = re.boxes(height: 20, width: 24, rng: &rng)
            if boxes.isEmpty { continue }
            erased += 1
            for b in boxes {
                XCTAssertTrue(b.height < 20 && b.width < 24 && b.top + b.height <= 20 && b.left + b.width <= 24)
                let area = Double(b.height * b.width) / 480
                XCTAssertTrue(area > 0.005 && area < 0.45, "\(b)")
            }
        }
        XCTAssertEqual(Double(erased) / 4000, 0.25, accuracy: 0.02)
        var image = [Float](repeating: 7, count: 3 * 40 * 50)
        let always = RandomErasing(probability: 1)
        var rng2 = RandomStream(seed: 6), copy = rng2
        image.withUnsafeMutableBufferPointer { always.apply($0, channels: 3, height: 40, width: 50, rng: &rng2) }
        let b = always.boxes(height: 40, width: 50, rng: &copy)[0]
        var inside: [Float] = []
        for c in 0..<3 {
            for y in 0..<40 {
                for x in 0..<50 {
                    let v = image[(c * 40 + y) * 50 + x]
                    if (b.top..<(b.top + b.height)).contains(y) && (b.left..<(b.left + b.width)).contains(x) {
                        inside.append(v)
                    } else {
                        XCTAssertEqual(v, 7)
                    }
                }
            }
        }
        let mean = inside.reduce(0, +) / Float(inside.count)
        let variance = inside.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Float(inside.count)
        XCTAssertGreaterThan(inside.count, 100)
        XCTAssertEqual(mean, 0, accuracy: 0.25)
        XCTAssertEqual(variance, 1, accuracy: 0.3)
    }
}
