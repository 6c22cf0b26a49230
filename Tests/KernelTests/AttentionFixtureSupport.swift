import Foundation
import TestSupport

/// A safetensors fixture of scripts/make_attention_fixtures.py (each case's sizes in "<case>/sizes"),
/// from this target's bundle.
typealias AttentionFixture = SafeTensorsFixture

extension SafeTensorsFixture {
    init(_ name: String) throws { try self.init(name, bundle: .module) }
}
