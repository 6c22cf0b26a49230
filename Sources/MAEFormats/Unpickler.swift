import Foundation
import MAEJSON

/// A storage a pickle refers to by persistent id: ('storage', torch.FloatStorage, key, location, numel).
struct TorchStorage {
    var dtype: DType
    var key: String
    /// Elements of `dtype` (raw little-endian bytes, at least count * itemSize of them).
    var count: Int
    var bytes: Data
}

/// A restricted unpickler for protocol 0-5 pickles as torch.save and Python write them. It runs no
/// code: it knows torch's tensor-rebuild functions, storages, `collections.OrderedDict` and numpy's
/// array, dtype and scalar rebuilds (numpy 1.x `numpy.core` and 2.x `numpy._core` names), and turns
/// every other global into an inert placeholder. All lengths are checked against the input, nesting and
/// memory are bounded, and malformed input throws a `PathError` naming `source`.
struct Unpickler {
    /// A mutable node while unpickling; pickles mutate containers after creating them (SETITEMS,
    /// APPENDS, BUILD) and share them through the memo, so nodes are references until the end.
    final class Node {
        enum Kind {
            case none, bool(Bool), int(Int), bigInt(String), float(Double), string(String), bytes(Data)
            case list, tuple, dict, set
            case global(String)
            case tensor(StoredTensor)
            case storage(TorchStorage)
            case object(String)
            /// `numpy.dtype(code, align, copy)`; its BUILD state sets the byte order ('<', '>', '|', '=').
            case numpyDType(code: String, byteOrder: String)
            /// `numpy...._reconstruct(ndarray, (0,), b'b')`: an empty array until BUILD gives its state.
            case numpyArray
        }
        var kind: Kind
        var items: [Node] = []
        var pairs: [(Node, Node)] = []
        /// What APPEND(S) added to a placeholder object (kept apart from its constructor arguments).
        var appended: [Node] = []
        var state: Node?
        init(_ kind: Kind, items: [Node] = []) {
            self.kind = kind
            self.items = items
        }
    }

    /// Every node created, so the graph can be taken apart iteratively at the end: releasing a deeply
    /// nested chain of nodes recursively would overflow the stack.
    final class Arena {
        var nodes: [Node] = []
        func dismantle() {
            for node in nodes {
                node.items = []
                node.pairs = []
                node.appended = []
                node.state = nil
            }
            nodes = []
        }
    }

    /// The deepest nesting converted to a `PickleValue` (recursion in Swift is bounded by the stack).
    static let maxDepth = 200

    private let bytes: [UInt8]
    private let source: String
    private var pos = 0
    private var stack: [Node] = []
    private var marks: [Int] = []
    private var memo: [Int: Node] = [:]
    private let loadStorage: (_ key: String, _ dtype: DType, _ count: Int) throws -> Data
    private var storages: [String: TorchStorage] = [:]
    private let arena = Arena()
    /// Bytes left for materialised tensors: views can repeat a storage, so a tiny file could otherwise
    /// ask for gigabytes.
    private var tensorBudget: Int
    /// Names of the untrusted globals met, in order (shown by `info`, checked by tests).
    private(set) var placeholders: [String] = []

    /// - Parameters:
    ///   - loadStorage: returns the raw bytes of storage `key` (at least count elements of dtype).
    ///   - tensorBudget: the most bytes all tensors together may materialise.
    init(_ data: Data, source: String, tensorBudget: Int,
         loadStorage: @escaping (String, DType, Int) throws -> Data) {
        self.bytes = [UInt8](data)
        self.source = source
        self.tensorBudget = tensorBudget
        self.loadStorage = loadStorage
    }

    private func fail(_ reason: String) -> PathError {
        PathError(source, "the pickle is malformed at byte \(pos): " + reason)
    }

    // MARK: - Reading primitives

    private mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, n <= bytes.count - pos else {
            throw fail("a length of \(n) bytes runs past the end (\(bytes.count - pos) left)")
        }
        defer { pos += n }
        return bytes[pos..<(pos + n)]
    }

    private mutating func uint(_ n: Int) throws -> UInt64 {
        var v: UInt64 = 0
        for (i, b) in try take(n).enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
        return v
    }

    /// A length field, refused when larger than the remaining input.
    private mutating func length(_ n: Int) throws -> Int {
        let v = try uint(n)
        guard v <= UInt64(bytes.count - pos) else { throw fail("a length of \(v) bytes runs past the end") }
        return Int(v)
    }

    private mutating func line() throws -> String {
        guard let end = bytes[pos...].firstIndex(of: 0x0A) else { throw fail("an unterminated text argument") }
        defer { pos = end + 1 }
        return String(decoding: bytes[pos..<end], as: UTF8.self)
    }

    private mutating func utf8(_ n: Int) throws -> String {
        guard let s = String(validating: try take(n), as: UTF8.self) else { throw fail("a string is not valid UTF-8") }
        return s
    }

    private mutating func pop() throws -> Node {
        guard let top = stack.popLast() else { throw fail("the stack is empty") }
        if let m = marks.last, stack.count < m { throw fail("an item was popped across a MARK") }
        return top
    }

    private func top() throws -> Node {
        guard let t = stack.last else { throw fail("the stack is empty") }
        return t
    }

    /// The items pushed since the last MARK, removing them and the mark.
    private mutating func popMark() throws -> [Node] {
        guard let m = marks.popLast() else { throw fail("no MARK to pop to") }
        guard m <= stack.count else { throw fail("the stack lost a MARK") }
        let items = Array(stack[m...])
        stack.removeSubrange(m...)
        return items
    }

    /// Signed little-endian integer of any length (LONG1/LONG4).
    private func longValue(_ digits: ArraySlice<UInt8>) -> Node.Kind {
        if digits.isEmpty { return .int(0) }
        if digits.count <= 8 {
            var v: UInt64 = 0
            for (i, b) in digits.enumerated() { v |= UInt64(b) << (8 * UInt64(i)) }
            let shift = UInt64(64 - 8 * digits.count)
            return .int(Int(Int64(bitPattern: v << shift) >> Int64(shift)))  // sign-extend
        }
        // Rare and never part of a state dict: render the magnitude approximately for display.
        let negative = (digits.last! & 0x80) != 0
        var value = 0.0
        for b in digits.reversed() { value = value * 256 + Double(negative ? ~b : b) }
        return .bigInt((negative ? "-" : "") + String(format: "%.0f", negative ? value + 1 : value))
    }

    // MARK: - The machine

    /// Runs the pickle to STOP and returns the top value as inert data.
    mutating func run() throws -> PickleValue {
        defer {
            stack = []
            memo = [:]
            arena.dismantle()
        }
        while true {
            let op = try take(1).first!
            switch op {
            case 0x80: // PROTO
                let v = try take(1).first!
                guard v <= 5 else { throw fail("unsupported pickle protocol \(v)") }
            case 0x95: _ = try uint(8) // FRAME: framing is only a read-ahead hint
            case 0x2E: // STOP
                let result = try pop()
                var converter = Converter(source: source)
                return try converter.value(result, depth: 0)
            case 0x28: marks.append(stack.count) // MARK
            case 0x30: _ = try pop() // POP
            case 0x31: _ = try popMark() // POP_MARK
            case 0x32: stack.append(try top()) // DUP
            case 0x4E: stack.append(make(.none)) // NONE
            case 0x88: stack.append(make(.bool(true))) // NEWTRUE
            case 0x89: stack.append(make(.bool(false))) // NEWFALSE
            case 0x4A: stack.append(make(.int(Int(Int32(truncatingIfNeeded: try uint(4)))))) // BININT
            case 0x4B: stack.append(make(.int(Int(try uint(1))))) // BININT1
            case 0x4D: stack.append(make(.int(Int(try uint(2))))) // BININT2
            case 0x8A: stack.append(make(longValue(try take(try length(1))))) // LONG1
            case 0x8B: stack.append(make(longValue(try take(try length(4))))) // LONG4
            case 0x49, 0x4C: // INT, LONG (text)
                var text = try line()
                if text.hasSuffix("L") { text.removeLast() }
                if op == 0x49, text == "00" || text == "01" { stack.append(make(.bool(text == "01"))); break }
                guard let v = Int(text) else { throw fail("a bad integer literal") }
                stack.append(make(.int(v)))
            case 0x47: stack.append(make(.float(Double(bitPattern: try uint(8).byteSwapped)))) // BINFLOAT (big-endian)
            case 0x46: // FLOAT (text)
                guard let v = Double(try line()) else { throw fail("a bad float literal") }
                stack.append(make(.float(v)))
            case 0x8C: stack.append(make(.string(try utf8(try length(1))))) // SHORT_BINUNICODE
            case 0x58: stack.append(make(.string(try utf8(try length(4))))) // BINUNICODE
            case 0x8D: stack.append(make(.string(try utf8(try length(8))))) // BINUNICODE8
            case 0x55, 0x54: // SHORT_BINSTRING, BINSTRING: Python 2 str, read as Latin-1 text
                let n = try length(op == 0x55 ? 1 : 4)
                stack.append(make(.string(String(try take(n).map { Character(Unicode.Scalar($0)) }))))
            case 0x43: stack.append(make(.bytes(Data(try take(try length(1)))))) // SHORT_BINBYTES
            case 0x42: stack.append(make(.bytes(Data(try take(try length(4)))))) // BINBYTES
            case 0x8E, 0x96: stack.append(make(.bytes(Data(try take(try length(8)))))) // BINBYTES8, BYTEARRAY8
            case 0x7D: stack.append(make(.dict)) // EMPTY_DICT
            case 0x5D: stack.append(make(.list)) // EMPTY_LIST
            case 0x29: stack.append(make(.tuple)) // EMPTY_TUPLE
            case 0x8F: stack.append(make(.set)) // EMPTY_SET
            case 0x64: // DICT
                let items = try popMark()
                guard items.count % 2 == 0 else { throw fail("DICT with an odd number of items") }
                let d = make(.dict)
                d.pairs = stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) }
                stack.append(d)
            case 0x6C: stack.append(make(.list, items: try popMark())) // LIST
            case 0x74: stack.append(make(.tuple, items: try popMark())) // TUPLE
            case 0x91: stack.append(make(.set, items: try popMark())) // FROZENSET
            case 0x85: let a = try pop(); stack.append(make(.tuple, items: [a])) // TUPLE1
            case 0x86: let b = try pop(), a = try pop(); stack.append(make(.tuple, items: [a, b])) // TUPLE2
            case 0x87: let c = try pop(), b = try pop(), a = try pop(); stack.append(make(.tuple, items: [a, b, c])) // TUPLE3
            // The popped items go into locals first: a non-mutating method call would capture `self`
            // (and its stack) before a mutating argument expression ran.
            case 0x61: let v = try pop(); try append([v]) // APPEND
            case 0x65, 0x90: let items = try popMark(); try append(items) // APPENDS, ADDITEMS (sets as lists)
            case 0x73: let v = try pop(), k = try pop(); try setItems([k, v]) // SETITEM
            case 0x75: let items = try popMark(); try setItems(items) // SETITEMS
            case 0x63: // GLOBAL "module\nname\n"
                let module = try line(), name = try line()
                try refuseCodeExecution(module, name)
                stack.append(make(.global(module + "." + name)))
            case 0x93: // STACK_GLOBAL
                let name = try pop(), module = try pop()
                guard case .string(let n) = name.kind, case .string(let m) = module.kind else {
                    throw fail("STACK_GLOBAL needs two strings")
                }
                try refuseCodeExecution(m, n)
                stack.append(make(.global(m + "." + n)))
            case 0x52: let args = try pop(), f = try pop(); stack.append(try call(f, args)) // REDUCE
            case 0x81: let args = try pop(), cls = try pop(); stack.append(try newObject(cls, args)) // NEWOBJ
            case 0x92: // NEWOBJ_EX (cls, args, kwargs)
                let kwargs = try pop(), args = try pop(), cls = try pop()
                let object = try newObject(cls, args)
                object.state = object.state ?? kwargs
                stack.append(object)
            case 0x62: let state = try pop(), target = try top(); try build(target, state) // BUILD
            case 0x69: // INST "module\nname\n" with MARKed args
                let module = try line(), name = try line()
                try refuseCodeExecution(module, name)
                let object = make(.object(module + "." + name), items: try popMark())
                placeholders.append(module + "." + name)
                stack.append(object)
            case 0x6F: // OBJ: MARK cls args
                let items = try popMark()
                guard let cls = items.first else { throw fail("OBJ without a class") }
                stack.append(try newObject(cls, make(.tuple, items: Array(items.dropFirst()))))
            case 0x71: memo[Int(try uint(1))] = try top() // BINPUT
            case 0x72: memo[Int(try uint(4))] = try top() // LONG_BINPUT
            case 0x94: memo[memo.count] = try top() // MEMOIZE
            case 0x70: // PUT (text)
                guard let i = Int(try line()) else { throw fail("a bad memo index") }
                memo[i] = try top()
            case 0x68, 0x6A, 0x67: // BINGET, LONG_BINGET, GET
                let index: Int
                if op == 0x67 {
                    guard let i = Int(try line()) else { throw fail("a bad memo index") }
                    index = i
                } else {
                    index = Int(try uint(op == 0x68 ? 1 : 4))
                }
                guard let node = memo[index] else { throw fail("memo entry \(index) was never stored") }
                stack.append(node)
            case 0x51: let pid = try pop(); let storage = try persistentLoad(pid); stack.append(storage) // BINPERSID
            default:
                throw fail("unsupported pickle opcode 0x\(String(op, radix: 16)) (not one torch.save writes)")
            }
        }
    }

    /// Modules whose functions only a code-execution payload would reference (shells, eval, imports,
    /// file and network access, attribute gadgets). Nothing is ever called either way; refusing makes
    /// a hostile file fail loudly instead of loading with an inert payload.
    static let hostileModules: Set<String> = [
        "os", "posix", "nt", "subprocess", "sys", "shutil", "socket", "importlib", "runpy", "pty", "ctypes",
        "code", "codeop", "pickle", "_pickle", "marshal", "types", "operator", "functools", "webbrowser",
        "commands", "platform", "asyncio", "multiprocessing", "pdb", "timeit", "io", "_io", "tempfile",
        "torch.hub", "torch.serialization", "torch.jit", "torch.ops", "torch.utils.cpp_extension",
    ]
    /// The only builtins a data pickle uses (sets, complex numbers, slices, bytearrays on protocol 2).
    static let safeBuiltins: Set<String> = ["set", "frozenset", "complex", "slice", "bytearray", "range"]

    /// `getattr`, which mmengine's checkpoints use to pickle a method reference
    /// (`getattr(HistoryBuffer, 'min')` in `message_hub`): allowed only as REDUCE on a class or
    /// module reference and a plain attribute name (`call`), where it becomes that inert reference.
    static let attributeBuiltin = "getattr"

    private func refuseCodeExecution(_ module: String, _ name: String) throws {
        let root = String(module.prefix { $0 != "." })
        let builtin = module == "builtins" || module == "__builtin__"
        let hostile = Self.hostileModules.contains(module) || Self.hostileModules.contains(root) ||
            Self.hostileModules.contains(where: { module.hasPrefix($0 + ".") }) ||
            (builtin && !Self.safeBuiltins.contains(name) && name != Self.attributeBuiltin)
        if hostile {
            throw PathError(source, "refers to \(module).\(name), which only code meant to run on loading needs; " +
                              "refusing the file as hostile (nothing in it was run)")
        }
    }

    /// A new node, registered for teardown.
    private func make(_ kind: Node.Kind, items: [Node] = []) -> Node {
        let node = Node(kind, items: items)
        arena.nodes.append(node)
        return node
    }

    private func append(_ values: [Node]) throws {
        let target = try top()
        switch target.kind {
        case .list, .set: target.items.append(contentsOf: values)
        case .object: target.appended.append(contentsOf: values)
        default: throw fail("APPEND to something that is not a list")
        }
    }

    private func setItems(_ flat: [Node]) throws {
        guard flat.count % 2 == 0 else { throw fail("SETITEMS with an odd number of items") }
        let target = try top()
        switch target.kind {
        case .dict, .object:
            for i in stride(from: 0, to: flat.count, by: 2) { target.pairs.append((flat[i], flat[i + 1])) }
        default: throw fail("SETITEM on something that is not a dict")
        }
    }

    private mutating func build(_ target: Node, _ state: Node) throws {
        // Placeholders keep their state (a Namespace's fields); a dict's BUILD state is OrderedDict's
        // `_metadata` attribute and a tensor's is Parameter bookkeeping: both unneeded. numpy's dtype and
        // ndarray take their `__setstate__` tuples, interpreted here without calling anything.
        switch target.kind {
        case .object: target.state = state
        case .numpyDType(let code, _):
            // (version, byteorder, subarray, names, fields, elsize, alignment, flags)
            guard case .tuple = state.kind, state.items.count >= 2, case .string(let order) = state.items[1].kind else {
                throw fail("a numpy dtype state without a byte order")
            }
            target.kind = .numpyDType(code: code, byteOrder: order)
        case .numpyArray:
            // (version, shape, dtype, is_fortran, rawdata), or without the version for numpy's oldest pickles.
            guard case .tuple = state.kind, state.items.count == 4 || state.items.count == 5 else {
                throw fail("a numpy array state that is not (version, shape, dtype, is_fortran, data)")
            }
            let s = state.items.suffix(4).map { $0 }
            let fortran: Bool
            switch s[2].kind {
            case .bool(let b): fortran = b
            case .int(let i): fortran = i != 0
            default: throw fail("a numpy array state whose order flag is not a bool")
            }
            target.kind = .tensor(try numpyArray(raw: s[3], dtype: s[1], shape: s[0], fortranOrder: fortran))
        default: break
        }
    }

    /// numpy type codes (kind + item size, as `dtype.__reduce__` spells them) and their element types.
    private static let numpyTypes: [String: DType] = [
        "f8": .f64, "f4": .f32, "f2": .f16, "i8": .i64, "i4": .i32, "i2": .i16, "i1": .i8, "u1": .u8, "b1": .bool,
    ]

    /// An ndarray from its raw bytes (Python 3 bytes or bytearray, or a Python 2 string read as Latin-1),
    /// in C or Fortran element order and either byte order, as a row-major little-endian tensor.
    private mutating func numpyArray(raw: Node, dtype: Node, shape: Node, fortranOrder: Bool) throws -> StoredTensor {
        guard case .numpyDType(let code, let byteOrder) = dtype.kind else { throw fail("a numpy array without a numpy dtype") }
        guard let type = Self.numpyTypes[code] else {
            throw PathError(source, "holds a numpy array of type '\(code)', which mae-eval does not read " +
                              "(it reads float16/32/64, int8/16/32/64, uint8 and bool)")
        }
        let dims = try ints(shape, "shape")
        guard let count = elementCount(dims) else { throw fail("a numpy array of shape \(dims) is too large") }
        var bytes: Data
        switch raw.kind {
        case .bytes(let d): bytes = d
        case .string(let text) where text.unicodeScalars.allSatisfy({ $0.value < 256 }):
            bytes = Data(text.unicodeScalars.map { UInt8($0.value) })
        default: throw fail("a numpy array whose data is not a byte string")
        }
        let item = type.itemSize
        guard bytes.count == count * item else {
            throw PathError(source, "a numpy array of shape \(dims) and type '\(code)' needs \(count * item) bytes " +
                              "but \(bytes.count) are stored")
        }
        guard bytes.count <= tensorBudget else { throw PathError(source, "its arrays would need far more memory than the file holds") }
        tensorBudget -= bytes.count
        if byteOrder == ">", item > 1 {
            bytes.withUnsafeMutableBytes { b in
                for start in stride(from: 0, to: b.count, by: item) { b[start..<(start + item)].reverse() }
            }
        }
        if fortranOrder, dims.count > 1 {
            // Column-major: the first index moves fastest.
            var strides = [Int](repeating: 1, count: dims.count)
            for d in 1..<dims.count { strides[d] = strides[d - 1] * dims[d - 1] }
            bytes = Self.gather(bytes, itemSize: item, start: 0, shape: dims, strides: strides)
        }
        return try StoredTensor(shape: dims, dtype: type, bytes: bytes, source: source)
    }

    private func globalName(_ node: Node) -> String? {
        if case .global(let name) = node.kind { return name }
        return nil
    }

    /// An inert object of an untrusted type; nothing is called.
    private mutating func placeholder(_ type: String, _ args: Node) -> Node {
        placeholders.append(type)
        let object = make(.object(type))
        if case .tuple = args.kind { object.items = args.items } else { object.items = [args] }
        return object
    }

    private mutating func newObject(_ cls: Node, _ args: Node) throws -> Node {
        if globalName(cls) == "collections.OrderedDict" { return try call(cls, args) }
        return placeholder(globalName(cls) ?? "an object built by another object", args)
    }

    /// REDUCE: only the functions that rebuild tensors and dicts are interpreted; anything else
    /// (`os.system`, `builtins.eval`, `numpy...scalar`) becomes a placeholder recording its arguments.
    private mutating func call(_ function: Node, _ args: Node) throws -> Node {
        guard let name = globalName(function) else { return placeholder("the result of a call", args) }
        guard case .tuple = args.kind else { return placeholder(name, args) }
        let a = args.items
        switch name {
        case "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor":
            guard a.count >= 4 else { throw fail("\(name) needs storage, offset, size and stride") }
            return make(.tensor(try rebuildTensor(storage: a[0], offset: a[1], size: a[2], stride: a[3])))
        case "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state":
            guard let data = a.first, case .tensor = data.kind else { throw fail("\(name) without a tensor") }
            return data
        case "torch._tensor._rebuild_from_type_v2":
            // (func, type, args, state): a tensor subclass; rebuild the plain tensor, drop the type.
            guard a.count >= 3 else { throw fail("\(name) needs a function and its arguments") }
            return try call(a[0], a[2])
        case "builtins.getattr", "__builtin__.getattr":
            // getattr(<class or module reference>, 'name') -> the reference <module.Class.name>, nothing run;
            // on anything else, or a dunder name (the attribute gadgets of hostile pickles), refused.
            guard a.count == 2, let owner = globalName(a[0]), case .string(let attribute) = a[1].kind,
                  !attribute.hasPrefix("_"), !attribute.isEmpty, attribute.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }) else {
                throw PathError(source, "calls getattr on something other than a class and a plain attribute name; " +
                                  "refusing the file as hostile (nothing in it was run)")
            }
            return make(.global(owner + "." + attribute))
        case "collections.OrderedDict":
            let dict = make(.dict)
            if let pairs = a.first, case .list = pairs.kind {
                for pair in pairs.items where pair.items.count == 2 { dict.pairs.append((pair.items[0], pair.items[1])) }
            }
            return dict
        case "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct":
            return make(.numpyArray)
        case "numpy.dtype":
            guard let first = a.first, case .string(let code) = first.kind else { throw fail("numpy.dtype without a type code") }
            return make(.numpyDType(code: code, byteOrder: "="))
        case "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer":
            // Protocol 5: (buffer, dtype, shape, order), the buffer in the array's memory order.
            guard a.count == 4, case .string(let order) = a[3].kind else { throw fail("\(name) needs buffer, dtype, shape and order") }
            return make(.tensor(try numpyArray(raw: a[0], dtype: a[1], shape: a[2], fortranOrder: order == "F")))
        case "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar":
            // A numpy scalar: (dtype, raw bytes), kept as a 0-d tensor; any other arguments stay inert.
            guard a.count == 2, case .numpyDType = a[0].kind else { return placeholder(name, args) }
            return make(.tensor(try numpyArray(raw: a[1], dtype: a[0], shape: make(.tuple), fortranOrder: false)))
        case "_codecs.encode":
            // Protocol-2 pickles of bytes: encode(text, 'latin1'), harmless to evaluate.
            guard let first = a.first, case .string(let text) = first.kind else { return placeholder(name, args) }
            let latin1 = text.unicodeScalars.allSatisfy { $0.value < 256 }
            return make(.bytes(latin1 ? Data(text.unicodeScalars.map { UInt8($0.value) }) : Data(text.utf8)))
        default:
            return placeholder(name, args)
        }
    }

    private static let storageTypes: [String: DType] = [
        "torch.DoubleStorage": .f64, "torch.FloatStorage": .f32, "torch.HalfStorage": .f16,
        "torch.BFloat16Storage": .bf16, "torch.LongStorage": .i64, "torch.IntStorage": .i32,
        "torch.ShortStorage": .i16, "torch.CharStorage": .i8, "torch.ByteStorage": .u8,
        "torch.BoolStorage": .bool, "torch.UntypedStorage": .u8,
    ]

    /// BINPERSID with torch's storage id ('storage', storage_type, key, location, numel).
    private mutating func persistentLoad(_ pid: Node) throws -> Node {
        guard case .tuple = pid.kind, pid.items.count >= 5, case .string("storage") = pid.items[0].kind else {
            throw fail("a persistent id that is not a torch storage")
        }
        guard let typeName = globalName(pid.items[1]) else { throw fail("a storage without a type") }
        guard let dtype = Self.storageTypes[typeName] else {
            throw PathError(source, "holds a storage of type \(typeName), which mae-eval does not read")
        }
        let key: String
        switch pid.items[2].kind {
        case .string(let s): key = s
        case .int(let i): key = String(i)
        default: throw fail("a storage key that is not a string")
        }
        guard case .int(let count) = pid.items[4].kind, count >= 0 else { throw fail("a storage size that is not a count") }
        if let known = storages[key] { return make(.storage(known)) }
        let storage = TorchStorage(dtype: dtype, key: key, count: count, bytes: try loadStorage(key, dtype, count))
        storages[key] = storage
        return make(.storage(storage))
    }

    private func ints(_ node: Node, _ what: String) throws -> [Int] {
        guard case .tuple = node.kind else { throw fail("the tensor \(what) is not a tuple") }
        return try node.items.map {
            guard case .int(let v) = $0.kind else { throw fail("the tensor \(what) holds a non-integer") }
            return v
        }
    }

    /// Materialises `storage[offset + sum(index * stride)]` over every index of `size`, row-major.
    private mutating func rebuildTensor(storage: Node, offset: Node, size: Node, stride: Node) throws -> StoredTensor {
        guard case .storage(let s) = storage.kind else { throw fail("a tensor without a storage") }
        guard case .int(let start) = offset.kind, start >= 0 else { throw fail("a bad tensor storage offset") }
        let shape = try ints(size, "size"), strides = try ints(stride, "stride")
        guard shape.count == strides.count, shape.allSatisfy({ $0 >= 0 }), strides.allSatisfy({ $0 >= 0 }) else {
            throw fail("a tensor size \(shape) does not fit its stride \(strides)")
        }
        guard let count = elementCount(shape) else { throw fail("a tensor of size \(shape) is too large") }
        let item = s.dtype.itemSize
        if count == 0 { return try StoredTensor(shape: shape, dtype: s.dtype, bytes: Data(), source: source) }
        // The last element read must lie inside the storage, and a view never has more elements.
        var last = start
        for (n, st) in zip(shape, strides) {
            let (step, o1) = (n - 1).multipliedReportingOverflow(by: st)
            let (sum, o2) = last.addingReportingOverflow(step)
            guard !o1, !o2 else { throw fail("a tensor view of size \(shape) overflows") }
            last = sum
        }
        guard last < s.count, count <= s.count else {
            throw PathError(source, "a tensor of size \(shape) reads past the end of its storage (\(s.count) elements)")
        }
        guard count * item <= tensorBudget else {
            throw PathError(source, "its tensors would need far more memory than the file holds")
        }
        tensorBudget -= count * item
        let raw = s.bytes
        let base = raw.startIndex
        let contiguous = zip(shape, strides).reversed().reduce((true, 1)) { acc, d in
            (acc.0 && (d.0 == 1 || d.1 == acc.1), acc.1 * d.0)
        }.0
        let out = contiguous ? raw[(base + start * item)..<(base + (start + count) * item)]
            : Self.gather(raw, itemSize: item, start: start, shape: shape, strides: strides)
        return try StoredTensor(shape: shape, dtype: s.dtype, bytes: out, source: source)
    }

    /// `raw[start + sum(index * stride)]` (in elements of `itemSize` bytes) over every index of `shape`,
    /// row-major; the caller has checked that every element read lies inside `raw`.
    private static func gather(_ raw: Data, itemSize item: Int, start: Int, shape: [Int], strides: [Int]) -> Data {
        let count = shape.reduce(1, *)
        var buffer = Data(count: count * item)
        var index = [Int](repeating: 0, count: shape.count)
        raw.withUnsafeBytes { src in
            buffer.withUnsafeMutableBytes { dst in
                var at = start
                for i in 0..<count {
                    (dst.baseAddress! + i * item).copyMemory(from: src.baseAddress! + at * item, byteCount: item)
                    // Odometer over the index, innermost dimension fastest.
                    var d = shape.count - 1
                    while d >= 0 {
                        index[d] += 1
                        at += strides[d]
                        if index[d] < shape[d] { break }
                        at -= strides[d] * shape[d]
                        index[d] = 0
                        d -= 1
                    }
                }
            }
        }
        return buffer
    }

    /// Converts the node graph to values, once per node (shared subtrees stay shared and cheap), with a
    /// depth limit; a container that contains itself is cut with a placeholder.
    struct Converter {
        let source: String
        var done: [ObjectIdentifier: PickleValue] = [:]
        var inProgress: Set<ObjectIdentifier> = []

        mutating func value(_ node: Node, depth: Int) throws -> PickleValue {
            let id = ObjectIdentifier(node)
            if let v = done[id] { return v }
            guard depth < Unpickler.maxDepth else {
                throw PathError(source, "the pickle nests deeper than \(Unpickler.maxDepth) levels")
            }
            guard inProgress.insert(id).inserted else {
                return .object(PickleObject(type: "<recursive reference>", args: [], state: nil, dictItems: [], listItems: []))
            }
            defer { inProgress.remove(id) }
            func all(_ nodes: [Node]) throws -> [PickleValue] { try nodes.map { try value($0, depth: depth + 1) } }
            func entries(_ pairs: [(Node, Node)]) throws -> [PickleDictEntry] {
                try pairs.map { PickleDictEntry(key: try value($0.0, depth: depth + 1), value: try value($0.1, depth: depth + 1)) }
            }
            let v: PickleValue
            switch node.kind {
            case .none: v = .none
            case .bool(let b): v = .bool(b)
            case .int(let i): v = .int(i)
            case .bigInt(let s): v = .bigInt(s)
            case .float(let d): v = .float(d)
            case .string(let s): v = .string(s)
            case .bytes(let d): v = .bytes(d)
            case .list, .set: v = .list(try all(node.items))
            case .tuple: v = .tuple(try all(node.items))
            case .dict: v = .dict(try entries(node.pairs))
            case .global(let name): v = .global(name)
            case .tensor(let t): v = .tensor(t)
            case .storage(let s): v = .object(PickleObject(type: "storage \(s.key) (\(s.count) x \(s.dtype.rawValue))",
                                                           args: [], state: nil, dictItems: [], listItems: []))
            case .numpyDType(let code, let order):
                v = .object(PickleObject(type: "numpy.dtype(\(order)\(code))", args: [], state: nil, dictItems: [], listItems: []))
            case .numpyArray:
                v = .object(PickleObject(type: "numpy.ndarray without its state", args: [], state: nil, dictItems: [], listItems: []))
            case .object(let type):
                v = .object(PickleObject(type: type, args: try all(node.items),
                                         state: try node.state.map { try value($0, depth: depth + 1) },
                                         dictItems: try entries(node.pairs), listItems: try all(node.appended)))
            }
            done[id] = v
            return v
        }
    }
}
