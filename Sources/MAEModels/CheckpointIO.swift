import Foundation
import MAEFormats
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
/// sentence naming the file, a load that would leave backbone weights random or heads unknown.
public func loadVisionTransformer(from url: URL, options: LoadOptions = LoadOptions()) throws -> LoadedModel {
    let info = try CheckpointInfo(contentsOf: url)
    if let refusal = info.refusal { throw FormatError(info.file.source, refusal) }
    let (weights, _) = canonicalize(info.file.tensors)
    let arch = info.architecture
    var notes: [String] = []

    var config: ViTConfig
    if let json = info.file.metadata["config"], let own = try? JSONDecoder().decode(ViTConfig.self, from: Data(json.utf8)) {
        config = own
    } else {
        guard let heads = options.heads ?? arch.numHeads else {
            throw FormatError(info.file.source, "does not say how many attention heads its width \(arch.embedDim) " +
                              "and depth \(arch.depth) use and matches no standard preset; pass --heads")
        }
        guard let grid = arch.gridSize else {
            throw FormatError(info.file.source, "has no square pos_embed to infer the input size from")
        }
        var decoder: DecoderConfig?
        if let d = arch.decoder {
            decoder = DecoderConfig(embedDim: d.embedDim, depth: d.depth, numHeads: d.numHeads ?? 16, mlpHidden: d.mlpHidden)
        }
        config = ViTConfig(imgSize: grid * arch.patchSize, patchSize: arch.patchSize, inChans: arch.inChans,
                           embedDim: arch.embedDim, depth: arch.depth, numHeads: heads, mlpHidden: arch.mlpHidden,
                           numClasses: arch.numClasses, pooling: arch.pooling, decoder: decoder)
    }
    if let h = options.heads, h != config.numHeads {
        notes.append("using \(h) heads as asked (the checkpoint says \(config.numHeads))")
        config.numHeads = h
    }
    let sourceGrid = config.gridSize
    if let size = options.imgSize { config.imgSize = size }
    if !options.keepDecoder, config.decoder != nil {
        config.decoder = nil
        notes.append("decoder dropped (a backbone for transfer)")
    }
    if !options.keepHead, config.numClasses > 0 {
        notes.append("classification head of \(config.numClasses) classes dropped")
        config.numClasses = 0
    }
    if options.keepDecoder && config.decoder == nil {
        throw FormatError(info.file.source, "has no MAE decoder (decoder_embed, decoder_blocks, decoder_pred)")
    }
    do { try config.validate() } catch { throw FormatError(info.file.source, "\(error)") }

    let model = try VisionTransformer(config: config)
    model.initializeWeights(seed: 0)
    for spec in model.params.specs {
        guard let stored = weights[spec.name] else {
            notes.append("\(spec.name) is not in the checkpoint: initialised as MAE does")
            continue
        }
        var values = stored.floats, shape = stored.shape
        if (spec.name == "pos_embed" || spec.name == "decoder_pos_embed"), shape != spec.shape, shape.count == 3 {
            let newGrid = config.gridSize
            values = resizePositionEmbedding(values, width: shape[2], from: sourceGrid, to: newGrid, prefixTokens: 1)
            shape = [1, 1 + newGrid * newGrid, shape[2]]
            notes.append("\(spec.name) resized from \(sourceGrid)x\(sourceGrid) to \(newGrid)x\(newGrid) (bicubic)")
        }
        guard shape == spec.shape else {
            throw FormatError(info.file.source, "\(spec.name) has shape \(shape) but the model needs \(spec.shape)")
        }
        try model.params.set(spec.name, shape: shape, values)
    }
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
            throw FormatError(path, "has no \(stateKey), so it is not a checkpoint this run can resume")
        }
        try accept(state)
        guard let configJSON = file.metadata["config"],
              let saved = try? JSONDecoder().decode(ViTConfig.self, from: Data(configJSON.utf8)), saved == config else {
            throw FormatError(path, "holds a different model than the one being trained")
        }
        for spec in params.specs {
            guard let t = file.tensors[spec.name], t.dtype == .f32, t.shape == spec.shape else {
                throw FormatError(path, "lacks \(spec.name) with shape \(spec.shape)")
            }
            try params.set(spec.name, shape: spec.shape, t.floats)
        }
        var moments: [String: [Float]] = [:]
        for (key, current) in optimizer.state {
            guard let t = file.tensors["optim." + key], t.dtype == .f32, t.count == current.count else {
                throw FormatError(path, "lacks the optimizer state optim.\(key)")
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
