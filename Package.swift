// swift-tools-version:6.0
// mae-eval: transfer-learning evaluation of MAE-pretrained Vision Transformers, on OpenBLAS and libpng.
import PackageDescription

/// Hot kernels need AVX2 + FMA; Swift's default x86-64 target has neither (see README, "CPU").
let vectorISA: [SwiftSetting] = [.unsafeFlags(["-target-cpu", "haswell"])]

let package = Package(
    name: "mae-eval",
    platforms: [.macOS(.v13)],
    // MARK: - Public API
    products: [
        .executable(name: "mae-eval", targets: ["mae-eval"]),
        .library(name: "MAEModels", targets: ["MAEModels"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.1"),
    ],
    targets: [
        // MARK: - C libraries (found through pkg-config, or linked by name where the library ships no .pc)
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng",
                       providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CTurboJPEG", pkgConfig: "libturbojpeg",
                       providers: [.apt(["libturbojpeg0-dev"])]),
        .systemLibrary(name: "CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]),
        /// oneDNN (bf16 matrix products); Debian's libdnnl-dev ships no pkg-config file, so the module map links it.
        .systemLibrary(name: "CDNNL", providers: [.apt(["libdnnl-dev"])]),

        // MARK: - Implementation, in dependency order
        /// Our AVX-512 C kernels, compiled for AVX-512 function by function and called only on CPUs that have it:
        /// versions of hot AVX2 loops (the fused attention's tile passes, GELU; no contraction, so results match
        /// the Swift loops bit for bit) and the bf16 matrix product on AVX512-BF16 (vdpbf16ps) for CPUs without AMX.
        .target(name: "CAVX512", cSettings: [.unsafeFlags(["-O2", "-ffp-contract=off"])]),
        /// Tensor storage and forward/backward ops over contiguous float32 buffers.
        .target(name: "MAEKernels", dependencies: ["COpenBLAS", "CDNNL", "CAVX512"], swiftSettings: vectorISA),
        /// The job's processes over MPI (rank, size, all-reduce, broadcast, all-gather); one process without a launcher never touches MPI.
        .target(name: "MAEDistributed", dependencies: ["MAEKernels", "CMPI"]),
        /// JSON values (ordered objects, exact numbers), a strict parser and a writer.
        .target(name: "MAEJSON"),
        /// File formats: safetensors, PyTorch zip checkpoints (restricted unpickler), key-rename rules.
        .target(name: "MAEFormats", dependencies: ["MAEJSON"]),
        /// ViT, MAE decoder, heads, the parameter table, architecture inference, checkpoint info and loading, optimizers.
        .target(name: "MAEModels", dependencies: ["MAEKernels", "MAEFormats", "MAEJSON"], swiftSettings: vectorISA),
        /// COCO annotation/result JSON and the COCO mask API (RLE).
        .target(name: "MAECOCO", dependencies: ["MAEJSON", "MAEFormats"]),
        /// Image codecs, datasets, the Shapes generator, transforms, the loader.
        .target(name: "MAEData", dependencies: ["MAEKernels", "MAEJSON", "MAEFormats", "CPNG", "CTurboJPEG", "MAECOCO"], swiftSettings: vectorISA),
        /// Evaluation metrics: COCO AP (bbox, segm), semantic-segmentation mIoU.
        .target(name: "MAEMetrics", dependencies: ["MAECOCO", "MAEJSON"]),
        /// Dense-task heads on the shared backbone: ViTDet's pyramid and Mask R-CNN, UperNet, the linear segmentation head.
        .target(name: "MAEDense", dependencies: ["MAEKernels", "MAEModels", "MAEFormats", "MAEJSON", "MAECOCO"],
                swiftSettings: vectorISA),
        /// Benchmarks, pretraining, probes, fine-tuning, reports: one function per CLI command.
        .target(name: "MAETasks", dependencies: ["MAEModels", "MAEDense", "MAEDistributed", "MAEData", "MAEMetrics", "MAEFormats", "MAEJSON",
                                                .product(name: "Yams", package: "Yams")]),
        /// The command line: each command parses its flags into the libraries' values and makes one call.
        .executableTarget(name: "mae-eval", dependencies: [
            "MAETasks", "MAEKernels", "MAEModels", "MAEData", "MAEFormats", "MAEJSON", "MAEDistributed",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        // MARK: - Tests
        /// Comparison helpers and the PyTorch reference fixtures (copies of the shared reference fixtures; nothing outside the repo is read).
        .target(name: "TestSupport", dependencies: ["MAEKernels", "MAEFormats"], path: "Tests/TestSupport",
                resources: [.copy("Fixtures")]),
        .testTarget(name: "KernelTests", dependencies: ["MAEKernels", "TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "ModelTests", dependencies: ["MAEModels", "TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "FormatTests", dependencies: ["MAEFormats", "MAEJSON", "MAEModels", "TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "MetricsTests", dependencies: ["MAEMetrics", "MAECOCO", "MAEJSON", "TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "DataTests", dependencies: ["MAEData", "MAECOCO", "MAEKernels", "TestSupport"], resources: [.copy("Fixtures")]),
        .testTarget(name: "DenseTests", dependencies: ["MAEDense", "MAEModels", "MAEKernels", "MAECOCO", "TestSupport"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "TaskTests", dependencies: ["MAETasks", "MAEModels", "MAEData", "MAEFormats", "MAEDistributed", "MAEDense",
                                                "MAEKernels", "MAEMetrics", "MAECOCO", "TestSupport"],
                    resources: [.copy("Fixtures")]),
    ],
    swiftLanguageModes: [.v5]
)
