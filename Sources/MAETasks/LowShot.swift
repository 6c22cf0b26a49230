import Foundation
import MAEKernels

/// How many training labels a low-shot linear probe keeps (`--shots K`, `--label-fraction F`, or the
/// task's `recipe.shots` / `recipe.label_fraction`).
public enum LabelBudget: Equatable, Sendable {
    /// K images of every class.
    case shots(Int)
    /// A class-balanced fraction: round(F x n_c) images of class c (at least one).
    case fraction(Double)

    /// The budget a recipe asks for, checked; nil: all of train.
    /// - Throws: `TaskError` naming the field when both are set or a value is out of range.
    static func of(_ recipe: RecipeSpec) throws -> LabelBudget? {
        switch (recipe.shots, recipe.labelFraction) {
        case (nil, nil): return nil
        case (_?, _?):
            throw TaskError.badArgument("recipe.shots and recipe.label_fraction (--shots, --label-fraction) exclude each other")
        case let (k?, nil):
            guard k >= 1 else { throw TaskError.badArgument("recipe.shots (--shots) must be at least 1, not \(k)") }
            return .shots(k)
        case let (nil, f?):
            guard f > 0 && f <= 1 else {
                throw TaskError.badArgument("recipe.label_fraction (--label-fraction) must be in (0, 1], not \(f)")
            }
            return .fraction(f)
        }
    }

    /// "1 shot", "10 shots", "1% labels": the variant suffix reports group by.
    var described: String {
        switch self {
        case .shots(let k): return k == 1 ? "1 shot" : "\(k) shots"
        case .fraction(let f): return String(format: "%g", f * 100) + "% labels"
        }
    }
}

/// The training images a low-shot probe keeps, as sorted indices into `labels`: for each class its
/// images in a seeded shuffle (`RandomStream(seed:epoch:index:)` with the run's seed and the class
/// index, so a seed picks the same subset whatever else runs), the first K (`.shots`) or
/// round(F x n_c), at least one (`.fraction`).
/// - Throws: `TaskError` when a class has fewer than K images.
public func lowShotSubset(labels: [Int], classes: [String], budget: LabelBudget, seed: UInt64) throws -> [Int] {
    let byClass = Dictionary(grouping: labels.indices, by: { labels[$0] })
    var kept: [Int] = []
    for c in byClass.keys.sorted() {
        var idx = byClass[c]!
        var rng = RandomStream(seed: seed, epoch: 0x10_5407, index: c)
        rng.shuffle(&idx)
        let take: Int
        switch budget {
        case .shots(let k):
            guard k <= idx.count else {
                throw TaskError.badArgument("--shots \(k) asks for more images than the \(idx.count) of class '\(classes[c])'")
            }
            take = k
        case .fraction(let f):
            take = min(idx.count, max(1, Int((Double(idx.count) * f).rounded())))
        }
        kept += idx[0..<take]
    }
    return kept.sorted()
}

extension FeatureSet {
    /// The rows `indices` of this set, in that order.
    func subset(_ indices: [Int]) -> FeatureSet {
        FeatureSet(features: gatherRows(features, width: width, indices), labels: indices.map { labels[$0] },
                   width: width, classes: classes)
    }
}
