import Foundation
import MAEFormats
import MAEJSON
import MAEKernels

/// How to build a model from a checkpoint.
public struct LoadOptions: Sendable {
    /// Head count when the checkpoint does not say and no standard preset matches (`--heads`).
    public var heads: Int?
    /// Input size; pos_embed is resized bicubically when it differs from the checkpoint's grid.
    public var imgSize: Int?
    /// Keep the MAE decoder (visualisation, continued pretraining); dropped otherwise.
    public var keepDecoder = false
    /// Keep the checkpoint's classification head; dropped otherwise (a backbone for transfer).
    public var keepHead = false
    /// The loaded model's `precision` (`--precision`): the one place every command that builds a model
    /// from a checkpoint (extract, the probes, kNN, fine-tuning, the dense tasks) takes it from.
    public var precision = Precision.fp32

    public init(heads: Int? = nil, imgSize: Int? = nil, keepDecoder: Bool = false, keepHead: Bool = false) {
        self.heads = heads; self.imgSize = imgSize; self.keepDecoder = keepDecoder; self.keepHead = keepHead
    }
}

/// A model built from a checkpoint, with what was learned about the file on the way.
public struct LoadedModel {
    public let model: VisionTransformer
    public let info: CheckpointInfo
    /// Plain-language notes: resized position embeddings, dropped head or decoder, initialised weights.
    public let notes: [String]
    /// The checkpoint's metadata (mae-eval's own files carry method, data, recipe).
    public var metadata: [String: String] { info.file.metadata }
}

/// Opens any supported checkpoint (safetensors, torch zip; MAE, timm, DeiT layouts), infers the
/// architecture, builds the model and copies every weight in, checking each shape. Refuses, in one
/// sentence naming the file, a load that would leave any weight the model keeps at its initial
/// values (`CheckpointInfo.refusal(decoder:head:)`, the verdict `info` prints), a weight holding NaN
/// or Inf, or an unknown head count. The decoder and the head are dropped with a note unless kept.
public func loadVisionTransformer(from url: URL, options: LoadOptions = LoadOptions()) throws -> LoadedModel {
    let info = try CheckpointInfo(contentsOf: url)
    let source = info.file.source
    if let refusal = info.refusal(decoder: options.keepDecoder, head: options.keepHead) {
        throw PathError(source, refusal)
    }
    let (weights, _) = canonicalize(info.file.tensors)
    let arch = info.architecture
    var notes: [String] = []

    guard let heads = options.heads ?? arch.numHeads else {
        throw PathError(source, "does not say how many attention heads its width \(arch.embedDim) " +
                          "and depth \(arch.depth) use and matches no standard preset; pass --heads")
    }
    if let h = options.heads, let own = arch.numHeads, h != own {
        notes.append("using \(h) heads as asked (the checkpoint says \(own))")
    }
    guard let grid = arch.gridSize else {
        throw PathError(source, "has no square pos_embed to infer the input size from")
    }
    if options.keepDecoder && arch.decoder == nil {
        throw PathError(source, "has no MAE decoder (decoder_embed, decoder_blocks, decoder_pred)")
    }
    if options.keepHead && arch.numClasses == 0 {
        throw PathError(source, "has no classification head (head.weight, head.bias)")
    }
    // The model is built from the architecture the weights were checked against, so every
    // parameter it has is in the checkpoint with its shape.
    let own = info.file.metadata["config"].flatMap { try? JSONDecoder().decode(ViTConfig.self, from: Data($0.utf8)) }
    var config = arch.config(heads: heads)
    config.normPixLoss = own?.normPixLoss ?? true
    let sourceGrid = grid
    if let size = options.imgSize { config.imgSize = size }
    if !options.keepDecoder, config.decoder != nil {
        config.decoder = nil
        notes.append("decoder dropped (a backbone for transfer)")
    }
    if !options.keepHead, config.numClasses > 0 {
        notes.append("classification head of \(config.numClasses) classes dropped")
        config.numClasses = 0
    }
    if arch.distilled {
        notes.append("DeiT distilled: cls and dist tokens both run; the cls-pool feature is the cls token after norm " +
                     "(DeiT's own eval averages the logits of head and head_dist, which are not used here)")
    }
    do { try config.validate() } catch { throw PathError(source, "\(error)") }

    let model = try VisionTransformer(config: config)
    for spec in model.params.specs {
        guard let stored = weights[spec.name] else {
            // Unreachable when the model matches the checked architecture; refused rather than left random.
            throw PathError(source, "refusing to load: the model needs \(spec.name), which is not in the checkpoint")
        }
        var values = stored.floats, shape = stored.shape
        if spec.name == "pos_embed" || spec.name == "decoder_pos_embed", shape != spec.shape {
            let prefix = spec.name == "pos_embed" ? config.numPrefixTokens : 1
            let newGrid = config.gridSize
            values = resizePositionEmbedding(values, width: shape[2], from: sourceGrid, to: newGrid, prefixTokens: prefix)
            shape = [1, prefix + newGrid * newGrid, shape[2]]
            notes.append("\(spec.name) resized from \(sourceGrid)x\(sourceGrid) to \(newGrid)x\(newGrid) (bicubic)")
        }
        guard shape == spec.shape else {
            throw PathError(source, "\(spec.name) is \(shape) in the checkpoint (\(stored.shape) as stored) but " +
                              "\(spec.shape) in the model")
        }
        try model.params.set(spec.name, shape: shape, values)
    }
    model.precision = options.precision
    return LoadedModel(model: model, info: info, notes: notes)
}

/// MAE's interpolate_pos_embed: the patch rows of a (prefix + G*G, D) table reshaped to (D, G, G),
/// resized bicubically (A = -0.75, align_corners false) to (D, G', G'); the prefix (cls) rows kept.
public func resizePositionEmbedding(_ table: [Float], width d: Int, from g: Int, to g2: Int,
                                    prefixTokens: Int = 1) -> [Float] {
    guard g != g2 else { return table }
    let grid = Tensor([1, d, g, g])
    for l in 0..<(g * g) { for c in 0..<d { grid[c * g * g + l] = table[(prefixTokens + l) * d + c] } }
    let resized = Tensor([1, d, g2, g2])
    resizeBicubicForward(out: resized.data, input: grid.data,
                         size: Resample2dSize(batch: 1, channels: d, height: g, width: g, outHeight: g2, outWidth: g2),
                         alignCorners: false)
    var out = Array(table[0..<(prefixTokens * d)])
    out.reserveCapacity((prefixTokens + g2 * g2) * d)
    for l in 0..<(g2 * g2) { for c in 0..<d { out.append(resized[c * g2 * g2 + l]) } }
    return out
}

extension VisionTransformer {
    /// Writes every parameter (layout order) as safetensors, atomically, with the full config as
    /// JSON under metadata `config` plus the caller's provenance (method, data, recipe, ...).
    public func save(to url: URL, metadata: [String: String] = [:]) throws {
        try safetensors(metadata: metadata).write(to: url)
    }

    /// A resumable training checkpoint: what `save` writes, plus the optimizer's state as `optim.*`
    /// tensors and the loop's own `state` as JSON under metadata `stateKey`.
    public func saveTrainingCheckpoint<State: Encodable>(to url: URL, optimizer: Optimizer, state: State,
                                                         stateKey: String, metadata: [String: String] = [:]) throws {
        var meta = metadata
        meta[stateKey] = try metadataJSON(state)
        var file = try safetensors(metadata: meta)
        for (key, values) in optimizer.state.sorted(by: { $0.key < $1.key }) {
            file.set("optim." + key, StoredTensor(shape: [values.count], floats: values))
        }
        try file.write(to: url)
    }

    /// Reads a checkpoint written by `saveTrainingCheckpoint` into this model and `optimizer` and
    /// returns its state. `accept` checks the state first (seed, batch size, ... must match the run
    /// being resumed) and throws its own one-sentence error when it does not.
    public func resumeTrainingCheckpoint<State: Decodable>(from url: URL, optimizer: Optimizer, stateKey: String,
                                                           accept: (State) throws -> Void) throws -> State {
        let file = try SafeTensors.read(contentsOf: url)
        let path = url.path
        guard let json = file.metadata[stateKey],
              let state = try? JSONDecoder().decode(State.self, from: Data(json.utf8)) else {
            throw PathError(path, "has no \(stateKey), so it is not a checkpoint this run can resume")
        }
        try accept(state)
        guard let configJSON = file.metadata["config"],
              let saved = try? JSONDecoder().decode(ViTConfig.self, from: Data(configJSON.utf8)), saved == config else {
            throw PathError(path, "holds a different model than the one being trained")
        }
        for spec in params.specs {
            guard let t = file.tensors[spec.name], t.dtype == .f32, t.shape == spec.shape else {
                throw PathError(path, "lacks \(spec.name) with shape \(spec.shape)")
            }
            try params.set(spec.name, shape: spec.shape, t.floats)
        }
        var moments: [String: [Float]] = [:]
        for (key, current) in optimizer.state {
            guard let t = file.tensors["optim." + key], t.dtype == .f32, t.count == current.count else {
                throw PathError(path, "lacks the optimizer state optim.\(key)")
            }
            moments[key] = t.floats
        }
        optimizer.state = moments
        return state
    }

    /// Every parameter as safetensors with the config and `metadata`.
    private func safetensors(metadata: [String: String]) throws -> SafeTensors {
        var meta = metadata
        meta["config"] = try metadataJSON(config)
        meta["format"] = "mae-eval"
        let tensors = params.specs.map { ($0.name, StoredTensor(shape: $0.shape, floats: Array(params.value($0.name)))) }
        return SafeTensors(tensors: tensors, metadata: meta)
    }
}

/// `value` as JSON with sorted keys, so the same model saved twice gives the same bytes.
func metadataJSON<T: Encodable>(_ value: T) throws -> String {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    return String(decoding: try encoder.encode(value), as: UTF8.self)
}
