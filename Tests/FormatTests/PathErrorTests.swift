import XCTest
import MAEFormats
import MAEJSON

final class PathErrorTests: XCTestCase {
    /// A wrapped error's description is already a sentence: it gets no second period.
    func testOnePeriodAfterAWrappedSentence() {
        XCTAssertEqual(PathError("a.safetensors", "no such file").description, "a.safetensors: no such file.")
        XCTAssertEqual(PathError("a.safetensors", "Invalid model configuration: image size 7 is not divisible by patch size 4.").description,
                       "a.safetensors: Invalid model configuration: image size 7 is not divisible by patch size 4.")
    }

    /// The one error struct keeps each layer's text: files, COCO files and label maps end with a
    /// period, the data layer's messages (period: false) as they always were, without one.
    func testEachLayersMessageTextIsKept() {
        XCTAssertEqual(PathError("gt.json", "expected a JSON object with images, annotations and categories").description,
                       "gt.json: expected a JSON object with images, annotations and categories.")
        XCTAssertEqual(PathError(URL(fileURLWithPath: "/d/train"), "has no images", period: false).description, "/d/train: has no images")
        XCTAssertEqual(describe(PathError(URL(fileURLWithPath: "/d/x.png"), "is an empty file", period: false)), "/d/x.png: is an empty file")
    }
}
