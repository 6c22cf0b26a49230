import XCTest
import MAEFormats

final class FormatErrorTests: XCTestCase {
    /// A wrapped error's description is already a sentence: it gets no second period.
    func testOnePeriodAfterAWrappedSentence() {
        XCTAssertEqual(FormatError("a.safetensors", "no such file").description, "a.safetensors: no such file.")
        XCTAssertEqual(FormatError("a.safetensors", "Invalid model configuration: image size 7 is not divisible by patch size 4.").description,
                       "a.safetensors: Invalid model configuration: image size 7 is not divisible by patch size 4.")
    }
}
