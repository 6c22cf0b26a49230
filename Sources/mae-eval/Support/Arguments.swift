// Flag values parsed straight into the libraries' types, so a command's options are built without
// string checks: a path is a file URL, an enum flag takes exactly the enum's raw values (listed in
// --help and in the error for any other word).
import ArgumentParser
import Foundation
import MAEFormats
import MAEKernels
import MAEModels
import MAETasks

extension URL: @retroactive ExpressibleByArgument {
    /// A path as given, resolved against the current folder.
    public init?(argument: String) { self.init(fileURLWithPath: argument) }

    /// The path as written (a relative default such as `runs` stays relative in --help).
    public var defaultValueDescription: String { relativePath }
}

extension Pooling: ExpressibleByArgument {}
extension PretrainMethod: ExpressibleByArgument {}
extension BenchMode: ExpressibleByArgument {}
extension Precision: ExpressibleByArgument {}
extension LinearProbeMode: ExpressibleByArgument {}
extension LoaderBenchMode: ExpressibleByArgument {}
extension IoUType: ExpressibleByArgument {}
