import Foundation
import MAEJSON
import MAEKernels

/// timm's RandAugment (`rand_augment_transform`), as MAE fine-tuning uses it with
/// `'rand-m9-mstd0.5-inc1'`: per image, `layers` ops drawn uniformly with replacement; each runs with
/// probability `probability` at a magnitude drawn from N(magnitude, magnitudeStd) clipped to
/// [0, magnitudeMax], mapped to the op's argument by timm's level functions (signed ops flip the sign
/// with probability 1/2). Geometric ops fill with `fill` and resample with `interpolation`, which
/// `create_transform` sets to the ImageNet mean pixel and the training interpolation (bicubic).
public struct RandAugment: Sendable, Equatable {
    /// The ops of timm's `_RAND_TRANSFORMS` (inc0) and `_RAND_INCREASING_TRANSFORMS` (inc1).
    public enum Op: String, Sendable, CaseIterable {
        case autoContrast = "AutoContrast", equalize = "Equalize", invert = "Invert", rotate = "Rotate"
        case posterize = "Posterize", posterizeIncreasing = "PosterizeIncreasing"
        case solarize = "Solarize", solarizeIncreasing = "SolarizeIncreasing", solarizeAdd = "SolarizeAdd"
        case color = "Color", colorIncreasing = "ColorIncreasing"
        case contrast = "Contrast", contrastIncreasing = "ContrastIncreasing"
        case brightness = "Brightness", brightnessIncreasing = "BrightnessIncreasing"
        case sharpness = "Sharpness", sharpnessIncreasing = "SharpnessIncreasing"
        case shearX = "ShearX", shearY = "ShearY", translateXRel = "TranslateXRel", translateYRel = "TranslateYRel"

        /// timm's `_RAND_INCREASING_TRANSFORMS` ('inc1'), in timm's order.
        public static let increasing: [Op] = [
            .autoContrast, .equalize, .invert, .rotate, .posterizeIncreasing, .solarizeIncreasing, .solarizeAdd,
            .colorIncreasing, .contrastIncreasing, .brightnessIncreasing, .sharpnessIncreasing,
            .shearX, .shearY, .translateXRel, .translateYRel]
        /// timm's `_RAND_TRANSFORMS` (the default, 'inc0').
        public static let standard: [Op] = [
            .autoContrast, .equalize, .invert, .rotate, .posterize, .solarize, .solarizeAdd,
            .color, .contrast, .brightness, .sharpness, .shearX, .shearY, .translateXRel, .translateYRel]

        /// Whether timm negates the argument with probability 1/2 (`_randomly_negate`).
        public var isSigned: Bool {
            switch self {
            case .rotate, .shearX, .shearY, .translateXRel, .translateYRel,
                 .colorIncreasing, .contrastIncreasing, .brightnessIncreasing, .sharpnessIncreasing: return true
            default: return false
            }
        }

        /// timm's LEVEL_TO_ARG for magnitude `m` (0...10), before any random sign. For the
        /// "increasing" enhancements the sign applies to the offset from 1: the factor is
        /// max(0.1, 1 + sign * offset), and `argument(level:negative:)` does that step.
        public func level(_ m: Double, translatePct: Double = 0.45) -> Double? {
            let f = m / 10
            switch self {
            case .autoContrast, .equalize, .invert: return nil
            case .rotate: return f * 30
            case .posterize: return Double(Int(f * 4))
            case .posterizeIncreasing: return Double(4 - Int(f * 4))
            case .solarize: return Double(min(256, Int(f * 256)))
            case .solarizeIncreasing: return Double(256 - min(256, Int(f * 256)))
            case .solarizeAdd: return Double(min(128, Int(f * 110)))
            case .color, .contrast, .brightness, .sharpness: return f * 1.8 + 0.1
            case .colorIncreasing, .contrastIncreasing, .brightnessIncreasing, .sharpnessIncreasing: return f * 0.9
            case .shearX, .shearY: return f * 0.3
            case .translateXRel, .translateYRel: return f * translatePct
            }
        }

        /// The op's argument from its level and sign, as timm's level functions return it.
        public func argument(level: Double, negative: Bool) -> Double {
            switch self {
            case .colorIncreasing, .contrastIncreasing, .brightnessIncreasing, .sharpnessIncreasing:
                return max(0.1, 1 + (negative ? -level : level))
            default:
                return negative ? -level : level
            }
        }

        /// Runs the op with its argument (degrees, bits, threshold, factor, shear or fraction).
        public func apply(_ image: RGBImage, argument v: Double, interpolation: PILInterpolation,
                          fill: RGBColor) -> RGBImage {
            switch self {
            case .autoContrast: return image.autocontrasted()
            case .equalize: return image.equalized()
            case .invert: return image.inverted()
            case .rotate: return image.rotated(degrees: v, interpolation: interpolation, fill: fill)
            case .posterize, .posterizeIncreasing: return image.posterized(bits: Int(v))
            case .solarize, .solarizeIncreasing: return image.solarized(threshold: Int(v))
            case .solarizeAdd: return image.solarizeAdded(Int(v))
            case .color, .colorIncreasing: return image.colorEnhanced(v)
            case .contrast, .contrastIncreasing: return image.contrastEnhanced(v)
            case .brightness, .brightnessIncreasing: return image.brightnessEnhanced(v)
            case .sharpness, .sharpnessIncreasing: return image.sharpnessEnhanced(v)
            case .shearX: return image.affineTransformed([1, v, 0, 0, 1, 0], interpolation: interpolation, fill: fill)
            case .shearY: return image.affineTransformed([1, 0, 0, v, 1, 0], interpolation: interpolation, fill: fill)
            case .translateXRel:
                return image.affineTransformed([1, 0, v * Double(image.width), 0, 1, 0], interpolation: interpolation, fill: fill)
            case .translateYRel:
                return image.affineTransformed([1, 0, 0, 0, 1, v * Double(image.height)], interpolation: interpolation, fill: fill)
            }
        }
    }

    public var ops: [Op]
    /// Ops applied per image ('n').
    public var layers: Int
    /// Mean magnitude on timm's 0...10 scale ('m').
    public var magnitude: Double
    /// Standard deviation of the magnitude noise ('mstd'); infinity samples uniformly in [0, magnitude].
    public var magnitudeStd: Double
    /// Upper clip of the sampled magnitude ('mmax', default 10).
    public var magnitudeMax: Double
    /// Probability that each drawn op runs ('p').
    public var probability: Double
    public var interpolation: PILInterpolation
    public var fill: RGBColor
    /// timm's `translate_pct` hparam.
    public var translatePct: Double

    public init(ops: [Op] = Op.increasing, layers: Int = 2, magnitude: Double = 9, magnitudeStd: Double = 0.5,
                magnitudeMax: Double = 10, probability: Double = 0.5, interpolation: PILInterpolation = .bicubic,
                fill: RGBColor = .imageNetMean, translatePct: Double = 0.45) {
        self.ops = ops; self.layers = layers; self.magnitude = magnitude; self.magnitudeStd = magnitudeStd
        self.magnitudeMax = magnitudeMax; self.probability = probability; self.interpolation = interpolation
        self.fill = fill; self.translatePct = translatePct
    }

    /// Parses a timm config string such as `rand-m9-mstd0.5-inc1` (sections m, n, mstd, mmax, inc, p;
    /// weighted op sets ('t...') are not supported).
    public init(config: String, interpolation: PILInterpolation = .bicubic, fill: RGBColor = .imageNetMean) throws {
        var parts = config.split(separator: "-").map(String.init)
        guard parts.first == "rand" else {
            throw PathError(config, "is not a RandAugment config (it must start with 'rand')", period: false)
        }
        parts.removeFirst()
        self.init(ops: Op.standard, magnitude: 10, interpolation: interpolation, fill: fill)
        magnitudeStd = 0
        for part in parts {
            guard let split = part.firstIndex(where: { $0.isNumber }), let value = Double(part[split...]) else {
                throw PathError(config, "has a section '\(part)' that is not a name followed by a number", period: false)
            }
            // Int(value) traps beyond Int's range; no section means anything that large.
            guard value.isFinite, abs(value) <= 1e6 else {
                throw PathError(config, "has a section '\(part)' whose number is out of range", period: false)
            }
            switch part[..<split] {
            case "m": magnitude = Double(Int(value))
            case "n": layers = Int(value)
            case "mstd": magnitudeStd = value > 100 ? .infinity : value
            case "mmax": magnitudeMax = Double(Int(value))
            case "inc": ops = value != 0 ? Op.increasing : Op.standard
            case "p": probability = value
            default: throw PathError(config, "has an unsupported section '\(part)'", period: false)
            }
        }
    }

    /// One image through `layers` randomly drawn ops.
    public func apply(_ image: RGBImage, rng: inout RandomStream) -> RGBImage {
        var out = image
        guard !ops.isEmpty else { return out }
        let chosen = (0..<layers).map { _ in ops[rng.below(ops.count)] }
        for op in chosen { out = apply(op, to: out, rng: &rng) }
        return out
    }

    /// timm's AugmentOp.__call__: the probability gate, the magnitude noise and clip, the level and sign.
    public func apply(_ op: Op, to image: RGBImage, rng: inout RandomStream) -> RGBImage {
        if probability < 1 && rng.unit() > probability { return image }
        var m = magnitude
        if magnitudeStd == .infinity {
            m = rng.uniform(0, m)
        } else if magnitudeStd > 0 {
            m += magnitudeStd * rng.normal()
        }
        m = max(0, min(m, magnitudeMax))
        let level = op.level(m, translatePct: translatePct) ?? 0
        let negative = op.isSigned && rng.unit() > 0.5
        return op.apply(image, argument: op.argument(level: level, negative: negative),
                        interpolation: interpolation, fill: fill)
    }
}
