import Foundation
import XCTest
@testable import MAEFormats
import TestSupport

final class TorchCheckpointTests: XCTestCase {
    /// Asserts the checkpoint's state dict equals the expected safetensors file exactly, key by key.
    private func assertSameWeights(_ file: CheckpointFile, _ expectName: String, prefix: String = "",
                                   file f: StaticString = #filePath, line: UInt = #line) throws {
        let expect = try SafeTensors.read(contentsOf: formatFixture(expectName))
        // safetensors sorts its header; the checkpoint keeps the state dict's own order.
        XCTAssertEqual(file.order.count, file.tensors.count, file: f, line: line)
        XCTAssertEqual(Set(file.order), Set(expect.order.map { prefix + $0 }), "keys", file: f, line: line)
        for name in expect.order {
            let t = try XCTUnwrap(file.tensors[prefix + name], name, file: f, line: line)
            let e = expect.tensors[name]!
            XCTAssertEqual(t.shape, e.shape, name, file: f, line: line)
            assertBitwiseEqual(t.floats, e.floats, name, file: f, line: line)
        }
    }

    func testSharedMAEFixtureEqualsItsSafetensorsTwin() throws {
        let pth = try CheckpointFile.open(TestSupport.fixtureURL("mae_tiny.pth"))
        let st = try SafeTensors.read(contentsOf: TestSupport.fixtureURL("mae_tiny.safetensors"))
        XCTAssertEqual(pth.format, .torchZip)
        XCTAssertEqual(pth.wrapper, "model")
        let weights = st.order.filter { !$0.hasPrefix("expect.") && !$0.hasPrefix("input.") && !$0.hasPrefix("grad.") }
        XCTAssertEqual(Set(pth.order), Set(weights))
        for name in weights {
            XCTAssertEqual(pth.tensors[name]!.shape, st.tensors[name]!.shape, name)
            XCTAssertEqual(pth.tensors[name]!.dtype, st.tensors[name]!.dtype, name)
            XCTAssertEqual(pth.tensors[name]!.bytes, st.tensors[name]!.bytes, name)
        }
    }

    func testTrainingCheckpointKeepsEpochArgsAndOptimizerAsExtras() throws {
        let file = try CheckpointFile.open(formatFixture("train_ckpt.pth"))
        XCTAssertEqual(file.wrapper, "model")
        try assertSameWeights(file, "train_ckpt_expect.safetensors")
        let extras = Dictionary(uniqueKeysWithValues: file.extras.map { ($0.key, $0.value) })
        XCTAssertEqual(Set(extras.keys), ["optimizer", "epoch", "scaler", "args"])
        guard case .int(3)? = extras["epoch"] else { return XCTFail("epoch: \(String(describing: extras["epoch"]))") }
        guard case .object(let args)? = extras["args"] else { return XCTFail("args is not a placeholder") }
        XCTAssertEqual(args.type, "argparse.Namespace")
        let fields = Dictionary(uniqueKeysWithValues: args.attributes)
        XCTAssertEqual(fields["model"], "mae_vit_tiny_patch8")
        XCTAssertEqual(fields["mask_ratio"], "0.75")
        XCTAssertEqual(fields["norm_pix_loss"], "True")
        XCTAssertEqual(fields["epochs"], "400")
        XCTAssertEqual(extras["scaler"]?["scale"]?.summary(), "65536.0")
        // AdamW state: exp_avg for every parameter, as tensors.
        guard case .dict(let state)? = extras["optimizer"]?["state"] else { return XCTFail("optimizer state") }
        XCTAssertEqual(state.count, file.order.count)
        XCTAssertEqual(file.placeholders, ["argparse.Namespace"])
        XCTAssertEqual(Array(file.order.prefix(3)), ["cls_token", "pos_embed", "patch_embed.proj.weight"])
    }

    func testEncoderOnlyBareTimmPrefixedAndHalfCheckpoints() throws {
        try assertSameWeights(try CheckpointFile.open(formatFixture("mae_encoder.pth")), "mae_encoder_expect.safetensors")
        let bare = try CheckpointFile.open(formatFixture("timm_bare.pth"))
        XCTAssertNil(bare.wrapper)
        try assertSameWeights(bare, "timm_bare_expect.safetensors")
        let prefixed = try CheckpointFile.open(formatFixture("module_prefixed.pth"))
        XCTAssertEqual(prefixed.wrapper, "state_dict")
        try assertSameWeights(prefixed, "timm_bare_expect.safetensors", prefix: "module.")
        XCTAssertEqual(prefixed.extras.map(\.key), ["epoch"])
        let half = try CheckpointFile.open(formatFixture("fp16.pth"))
        XCTAssertEqual(half.tensors["pos_embed"]?.dtype, .f16)
        try assertSameWeights(half, "fp16_expect.safetensors")
    }

    func testViewsAreMaterialisedLikeContiguous() throws {
        let value = try TorchCheckpoint.read(contentsOf: formatFixture("views.pth"))
        let expect = try SafeTensors.read(contentsOf: formatFixture("views_expect.safetensors"))
        guard case .dict(let entries) = value else { return XCTFail("not a dict") }
        XCTAssertEqual(entries.count, expect.order.count)
        for name in expect.order {
            guard case .tensor(let t)? = value[name] else { XCTFail("\(name) is not a tensor"); continue }
            let e = expect.tensors[name]!
            XCTAssertEqual(t.shape, e.shape, name)
            assertBitwiseEqual(t.floats, e.floats, name)
            if e.dtype == .i64 { XCTAssertEqual(t.int64s, e.int64s, name) }
        }
        guard case .tensor(let b)? = value["bf16"], case .tensor(let l)? = value["long"] else { return XCTFail() }
        XCTAssertEqual(b.dtype, .bf16)
        XCTAssertEqual(l.int64s, [1, -2, 1 << 40])
    }

    func testZip64EndRecordIsFollowed() throws {
        // torch writes ZIP64 end records too; mark the classic record's fields "see ZIP64" to use them.
        var data = try Data(contentsOf: TestSupport.fixtureURL("mae_tiny.pth"))
        let eocd = try XCTUnwrap((0...(data.count - 22)).reversed().first {
            data[$0] == 0x50 && data[$0 + 1] == 0x4B && data[$0 + 2] == 5 && data[$0 + 3] == 6
        })
        for i in 8..<20 { data[eocd + i] = 0xFF }
        let (value, _) = try TorchCheckpoint.parse(data, source: "zip64.pth")
        let file = try CheckpointFile.fromPickle(value, source: "zip64.pth")
        XCTAssertEqual(file.tensors["pos_embed"]?.shape, [1, 17, 64])
        // Without a ZIP64 record to follow, the same edit is an error, not a crash.
        data[eocd - 20] = 0
        assertFormatError("zip64.pth", "ZIP64") { try TorchCheckpoint.parse(data, source: "zip64.pth") }
    }

    func testZip64ExtraFieldsInTheCentralDirectory() throws {
        let payload = Data("hello".utf8)
        let zip = storedZip(name: "a/data.pkl", payload: Data([0x80, 0x02, 0x4B, 0x07, 0x2E]), zip64Extra: true)
        let (value, _) = try TorchCheckpoint.parse(zip, source: "x.pth")
        guard case .int(7) = value else { return XCTFail("\(value)") }
        _ = payload
    }

    func testHostileCheckpointsAreRefusedAndRunNothing() throws {
        let marker = "/tmp/mae_eval_formats_pwned"
        try? FileManager.default.removeItem(atPath: marker)
        assertFormatError("evil_system.pth", "refers to posix.system") { try CheckpointFile.open(formatFixture("evil_system.pth")) }
        assertFormatError("evil_eval.pth", "refers to __builtin__.eval") { try CheckpointFile.open(formatFixture("evil_eval.pth")) }
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "a checkpoint ran code")
    }

    func testUnknownCallsBecomeInertPlaceholders() throws {
        // {'x': numpy.core.multiarray.scalar('abc', 7)} built by hand: REDUCE on an unknown global.
        var p = Data([0x80, 0x02, 0x7D, 0x8C, 0x01, 0x78])
        p.append(contentsOf: Array("cnumpy.core.multiarray\nscalar\n".utf8))
        p.append(contentsOf: [0x8C, 0x03] + Array("abc".utf8) + [0x4B, 0x07, 0x86, 0x52, 0x73, 0x2E])
        var u = Unpickler(p, source: "p", tensorBudget: 0) { _, _, _ in Data() }
        let value = try u.run()
        guard case .object(let o)? = value["x"] else { return XCTFail("\(value)") }
        XCTAssertEqual(o.type, "numpy.core.multiarray.scalar")
        XCTAssertEqual(o.args.map { $0.summary() }, ["abc", "7"])
        XCTAssertEqual(u.placeholders, ["numpy.core.multiarray.scalar"])
    }

    /// A checkpoint as mmengine's Runner saves it: the state dict beside `message_hub` (real
    /// HistoryBuffer objects, pickled with getattr(HistoryBuffer, 'min')), `optimizer` and
    /// `param_schedulers` (scripts/make_mmengine_fixture.py).
    func testMMEngineTrainingCheckpointLoadsItsStateDict() throws {
        let file = try CheckpointFile.open(formatFixture("mmengine_full.pth"))
        XCTAssertEqual(file.wrapper, "state_dict")
        XCTAssertEqual(Set(file.tensors.keys), ["backbone.patch_embed.projection.weight", "decode_head.conv_seg.bias"])
        XCTAssertEqual(file.tensors["backbone.patch_embed.projection.weight"]?.shape, [4, 3, 2, 2])
    }

    /// getattr is read only as a method reference of a class (mmengine's); on anything else, or with
    /// a dunder name (the attribute gadgets of hostile pickles), the file is refused.
    func testGetattrIsOnlyAClassAttributeReference() throws {
        func pickle(owner: [UInt8], attribute: String) -> Data {
            var p = Data([0x80, 0x02, 0x7D, 0x8C, 0x01, 0x78])                     // {  'x':
            p.append(contentsOf: Array("c__builtin__\ngetattr\n".utf8))
            p.append(contentsOf: owner)
            p.append(contentsOf: [0x8C, UInt8(attribute.utf8.count)] + Array(attribute.utf8))
            p.append(contentsOf: [0x86, 0x52, 0x73, 0x2E])                          // (owner, name) REDUCE SETITEM STOP
            return p
        }
        let historyBuffer = Array("cmmengine.logging.history_buffer\nHistoryBuffer\n".utf8)
        var u = Unpickler(pickle(owner: historyBuffer, attribute: "min"), source: "p", tensorBudget: 0) { _, _, _ in Data() }
        guard case .global(let name)? = try u.run()["x"] else { return XCTFail("getattr did not give a reference") }
        XCTAssertEqual(name, "mmengine.logging.history_buffer.HistoryBuffer.min")
        var dunder = Unpickler(pickle(owner: historyBuffer, attribute: "__globals__"), source: "dunder.pth", tensorBudget: 0) { _, _, _ in Data() }
        assertFormatError("dunder.pth", "getattr") { try dunder.run() }
        var onString = Unpickler(pickle(owner: [0x8C, 0x01, 0x61], attribute: "min"), source: "string.pth", tensorBudget: 0) { _, _, _ in Data() }
        assertFormatError("string.pth", "getattr") { try onString.run() }
        var hostile = Unpickler(pickle(owner: Array("cposix\nsystem\n".utf8), attribute: "min"), source: "posix.pth", tensorBudget: 0) { _, _, _ in Data() }
        assertFormatError("posix.pth", "refers to posix.system") { try hostile.run() }
    }

    func testBrokenCheckpointsThrowOneSentence() throws {
        let cases: [(String, String)] = [
            ("truncated.pth", "end-of-central-directory"),
            ("empty.pth", "empty"),
            ("random.pth", "neither"),
            ("legacy.pth", "legacy"),
            ("compressed.pth", "compressed"),
        ]
        for (name, fragment) in cases {
            assertFormatError(name, fragment) { try CheckpointFile.open(formatFixture(name)) }
            assertFormatError(name, fragment == "neither" ? "neither" : fragment) {
                try TorchCheckpoint.read(contentsOf: formatFixture(name))
            }
        }
    }

    /// Every pickle prefix and every single-byte corruption of a real checkpoint throws or loads; none crashes.
    func testCorruptedPicklesNeverCrash() throws {
        let zip = try ZipArchive(data: try Data(contentsOf: formatFixture("train_ckpt.pth")), source: "t")
        let pickleEntry = try XCTUnwrap(zip.entries.first { $0.name.hasSuffix("data.pkl") })
        let pickle = Data(try XCTUnwrap(zip.contents(of: pickleEntry.name)))
        let storage = { (_: String, dtype: DType, count: Int) in Data(count: count * dtype.itemSize) }
        var failures = 0
        for cut in stride(from: 0, to: pickle.count, by: 53) {
            var u = Unpickler(pickle.prefix(cut), source: "t", tensorBudget: 1 << 24, loadStorage: storage)
            if (try? u.run()) == nil { failures += 1 }
        }
        XCTAssertGreaterThan(failures, 0)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            var bad = pickle
            bad[Int.random(in: 0..<bad.count, using: &generator)] = UInt8.random(in: 0...255, using: &generator)
            var u = Unpickler(bad, source: "t", tensorBudget: 1 << 24, loadStorage: storage)
            _ = try? u.run()
        }
    }

    func testDeepNestingAndSelfReferenceAreBounded() throws {
        // 100000 nested EMPTY_LIST + APPEND would overflow a recursive converter.
        var deep = Data([0x80, 0x02])
        for _ in 0..<100_000 { deep.append(0x5D) }
        for _ in 0..<99_999 { deep.append(0x61) }
        deep.append(0x2E)
        var u = Unpickler(deep, source: "deep.pth", tensorBudget: 0) { _, _, _ in Data() }
        assertFormatError("deep.pth", "deeper") { try u.run() }
        // l = []; l.append(l)
        let cyclic = Data([0x80, 0x02, 0x5D, 0x71, 0x00, 0x68, 0x00, 0x61, 0x2E])
        var c = Unpickler(cyclic, source: "c", tensorBudget: 0) { _, _, _ in Data() }
        guard case .list(let items) = try c.run(), case .object(let o)? = items.first else { return XCTFail() }
        XCTAssertEqual(o.type, "<recursive reference>")
    }

    /// A one-entry stored zip; with `zip64Extra` the central directory gives sizes and offset through
    /// a ZIP64 extra field, as writers do for entries beyond 4 GiB.
    private func storedZip(name: String, payload: Data, zip64Extra: Bool) -> Data {
        var out = Data()
        func u16(_ v: Int) { withUnsafeBytes(of: UInt16(v).littleEndian) { out.append(contentsOf: $0) } }
        func u32(_ v: Int) { withUnsafeBytes(of: UInt32(truncatingIfNeeded: v).littleEndian) { out.append(contentsOf: $0) } }
        func u64(_ v: Int) { withUnsafeBytes(of: UInt64(v).littleEndian) { out.append(contentsOf: $0) } }
        let nameBytes = Data(name.utf8)
        u32(0x0403_4b50); u16(20); u16(0); u16(0); u16(0); u16(0); u32(0)
        u32(payload.count); u32(payload.count); u16(nameBytes.count); u16(0)
        out.append(nameBytes)
        out.append(payload)
        let cdAt = out.count
        u32(0x0201_4b50); u16(45); u16(45); u16(0); u16(0); u16(0); u16(0); u32(0)
        u32(zip64Extra ? 0xFFFF_FFFF : payload.count); u32(zip64Extra ? 0xFFFF_FFFF : payload.count)
        u16(nameBytes.count); u16(zip64Extra ? 28 : 0); u16(0); u16(0); u16(0); u32(0)
        u32(zip64Extra ? 0xFFFF_FFFF : 0)
        out.append(nameBytes)
        if zip64Extra { u16(1); u16(24); u64(payload.count); u64(payload.count); u64(0) }
        let cdSize = out.count - cdAt
        u32(0x0605_4b50); u16(0); u16(0); u16(1); u16(1); u32(cdSize); u32(cdAt); u16(0)
        return out
    }
}
