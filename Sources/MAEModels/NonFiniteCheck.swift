import Foundation
import MAEFormats
import MAEKernels

/// A value that went NaN or infinite where it was made (an image's features, a reconstruction, a
/// training loss). The description is one sentence naming where.
public struct NonFiniteError: Error, LocalizedError, CustomStringConvertible, Sendable {
    /// The sentence, without its final period.
    public var message: String

    public init(_ message: String) { self.message = message }

    public var description: String { message.hasSuffix(".") ? message : message + "." }
    public var errorDescription: String? { description }

    /// The error for image `path` whose `what` (a plural: "features", "reconstructed pixels") hold
    /// `found` of their `total` values; `stage` is where its forward first went non-finite.
    public static func image(_ path: String, _ what: String, _ found: NonFiniteCount, of total: Int,
                             stage: String) -> NonFiniteError {
        NonFiniteError("\(path): its \(what) hold \(found.phrase) (of \(total)), first non-finite at \(stage); " +
                       "refusing to evaluate a broken model")
    }

    /// The error for a training loss that is not finite at `step` ("epoch 1, step 3"). It says
    /// whether the weights were already non-finite (before any update: a broken model, not the
    /// learning rate; after updates: the run diverged) or whether the weights are finite and the
    /// loss alone overflowed (divergence: only then is a lower learning rate the advice).
    /// `context` (e.g. which checkpoint was kept) ends the sentence.
    public static func loss(_ loss: Float, at step: String, model: VisionTransformer, updated: Bool,
                            lrAdvice: String, context: String? = nil) -> NonFiniteError {
        let head = "Training stopped at \(step): the loss is \(loss)"
        let tail = context.map { "; \($0)" } ?? ""
        guard let bad = model.firstNonFiniteParameter() else {
            return NonFiniteError("\(head) with finite weights, so training diverged; \(lrAdvice)\(tail)")
        }
        let where_ = "\(bad.name) holds \(bad.count.phrase) (first at element \(bad.count.first))"
        return updated
            ? NonFiniteError("\(head) because an update made the weights non-finite (\(where_)), so training diverged; " +
                             "\(lrAdvice)\(tail)")
            : NonFiniteError("\(head) before any update because the model's weights are not finite (\(where_)); " +
                             "the learning rate is not the cause\(tail)")
    }
}

extension VisionTransformer {
    /// The first parameter (layout order) holding NaN or Inf, nil when all are finite.
    public func firstNonFiniteParameter() -> (name: String, count: NonFiniteCount)? {
        for spec in params.specs {
            if let found = NonFiniteCount(UnsafeBufferPointer(params.value(spec.name))) { return (spec.name, found) }
        }
        return nil
    }

    /// Where image `row` of `images` (B,C,H,W) first goes non-finite in the unmasked eval forward:
    /// a parameter of the token embedding, the patch embedding, a block's output or the final norm
    /// ("the output of blocks.3"). Reruns the batch once, keeping every block's output.
    public func firstNonFiniteStage(images: UnsafePointer<Float>, batch b: Int, row: Int) -> String {
        let d = config.embedDim
        let embedded = patchEmbedding(images: images, batch: b)
        let l = config.numPatches
        if NonFiniteCount(UnsafeBufferPointer(start: embedded.data + row * l * d, count: l * d)) != nil {
            return "the patch embedding (patch_embed)"
        }
        for name in ["cls_token", "dist_token", "pos_embed"] where params.spec(name) != nil {
            if NonFiniteCount(UnsafeBufferPointer(params.value(name))) != nil { return name }
        }
        let ctx = forwardEncoder(images: images, batch: b, blocks: Array(0..<config.depth), finalOutput: false)
        let n = ctx.tokens
        for i in 0..<config.depth {
            let out = ctx.blockOutput(i)
            let bad = withExtendedLifetime(out) { NonFiniteCount(UnsafeBufferPointer(start: out.data + row * n * d, count: n * d)) }
            if bad != nil { return "the output of blocks.\(i)" }
        }
        return params.spec("norm.weight") != nil ? "the final norm (norm)" : "the pooling and fc_norm"
    }
}
