import Foundation
import TestSupport

/// A safetensors fixture of the dense scripts, from this target's bundle.
typealias DenseFixture = SafeTensorsFixture

extension SafeTensorsFixture {
    init(_ name: String) throws { try self.init(name, bundle: .module) }
}
