import Foundation
import XCTest
@testable import MAEFormats
import MAEModels
import TestSupport

final class CheckpointInfoTests: XCTestCase {
    func testTrainingCheckpointInfo() throws {
        let info = try CheckpointInfo(contentsOf: formatFixture("train_ckpt.pth"))
        let text = info.rendered
        XCTAssertEqual(info.layout, .maePretrainWithDecoder)
        XCTAssertEqual(info.parameters, 26_336)
        XCTAssertEqual(info.decoderParameters, 7_200)
        XCTAssertNil(info.refusal)
        for expected in ["format       PyTorch zip checkpoint (torch.save)", "state dict   38 tensors (38 F32), under 'model'",
                         "epoch        3", "args         argparse.Namespace with 15 fields:", "  mask_ratio = 0.75",
                         "heads        unknown: no head count in the metadata and no standard preset of width 32, depth 1; pass --heads",
                         "decoder      yes", "keys         38 weights matched", "loadable     yes"] {
            XCTAssertTrue(text.contains(expected), "missing '\(expected)' in:\n\(text)")
        }
    }

    func testSafetensorsInfoShowsMetadataHeadsAndPrefixes() throws {
        let text = try CheckpointInfo(contentsOf: TestSupport.fixtureURL("vit_tiny_cls.safetensors")).rendered
        XCTAssertTrue(text.contains("heads        4 from the checkpoint's metadata"), text)
        XCTAssertTrue(text.contains("global average pool + fc_norm, head of 5 classes"), text)
        let prefixed = try CheckpointInfo(contentsOf: formatFixture("module_prefixed.pth")).rendered
        XCTAssertTrue(prefixed.contains("key mapping  removed the prefix 'module.' from every key"), prefixed)
    }

    func testNonViTIsOneSentence() {
        assertFormatError("views.pth", "unrecognised key layout") { try CheckpointInfo(contentsOf: formatFixture("views.pth")) }
    }
}
