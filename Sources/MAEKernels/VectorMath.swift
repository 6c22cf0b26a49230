// Vectorised transcendental functions over 16 float lanes (two AVX2 registers with -target-cpu
// haswell). Accurate to a few float ulps, as PyTorch's Sleef kernels are, so the non-matrix work
// of a ViT stays small next to its matrix products (see DESIGN.md, Numerics).

#if arch(x86_64)
import _Builtin_intrinsics.intel
#endif

public typealias Vec16 = SIMD16<Float>

/// a * b + c, fused (one rounding): two vfmadd231ps on the halves. `SIMD.addingProduct` is a
/// per-lane loop of scalar fma calls that LLVM's SLP vectoriser regroups badly at 16 lanes (part of
/// exp16's high half ran as scalar vfmaddss plus lane blends, 3x slower); the intrinsic has the
/// same single rounding, so results are bit-identical.
@inline(__always) @usableFromInline
func fma16(_ a: Vec16, _ b: Vec16, _ c: Vec16) -> Vec16 {
    #if arch(x86_64)
    Vec16(lowHalf: _mm256_fmadd_ps(a.lowHalf, b.lowHalf, c.lowHalf),
          highHalf: _mm256_fmadd_ps(a.highHalf, b.highHalf, c.highHalf))
    #else
    c.addingProduct(a, b)
    #endif
}

/// e^x for every lane: Cody-Waite reduction x = n ln2 + r, Cephes' degree-6 polynomial for e^r,
/// and 2^n assembled in the exponent bits. Inputs are clamped to [-87.3, 88.0] (no inf/denormals).
@inline(__always) @usableFromInline
func exp16(_ input: Vec16) -> Vec16 {
    let lo = Vec16(repeating: -87.3), hi = Vec16(repeating: 88.0)
    // replacing(with:where:) with vector operands lowers to vcmpps + vblendvps (SIMD.clamped does not).
    let x = input.replacing(with: lo, where: input .< lo).replacing(with: hi, where: input .> hi)
    let magic = Vec16(repeating: 12582912)  // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let t = fma16(x, Vec16(repeating: 1.44269504088896341), magic)
    let n = t - magic
    var r = fma16(n, Vec16(repeating: -0.693359375), x)
    r = fma16(n, Vec16(repeating: 2.12194440e-4), r)
    var p = Vec16(repeating: 1.9875691500e-4)
    p = fma16(p, r, Vec16(repeating: 1.3981999507e-3))
    p = fma16(p, r, Vec16(repeating: 8.3334519073e-3))
    p = fma16(p, r, Vec16(repeating: 4.1665795894e-2))
    p = fma16(p, r, Vec16(repeating: 1.6666665459e-1))
    p = fma16(p, r, Vec16(repeating: 5.0000001201e-1))
    let y = fma16(p * r, r, r) + 1
    let ni = unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000
    let scale = unsafeBitCast((ni &+ 127) &<< 23, to: Vec16.self)
    return y * scale
}

/// erfc(z) for z >= 0 with relative error about 1.2e-7 (Numerical Recipes' Chebyshev fit,
/// erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2)); relative accuracy in the tail is what the
/// negative side of GELU needs.
@inline(__always) @usableFromInline
func erfcPositive16(_ z: Vec16) -> Vec16 {
    let t = 1 / fma16(z, Vec16(repeating: 0.5), Vec16(repeating: 1))
    var p = Vec16(repeating: 0.17087277)
    p = fma16(p, t, Vec16(repeating: -0.82215223))
    p = fma16(p, t, Vec16(repeating: 1.48851587))
    p = fma16(p, t, Vec16(repeating: -1.13520398))
    p = fma16(p, t, Vec16(repeating: 0.27886807))
    p = fma16(p, t, Vec16(repeating: -0.18628806))
    p = fma16(p, t, Vec16(repeating: 0.09678418))
    p = fma16(p, t, Vec16(repeating: 0.37409196))
    p = fma16(p, t, Vec16(repeating: 1.00002368))
    p = fma16(p, t, Vec16(repeating: -1.26551223))
    return t * exp16(fma16(-z, z, p))
}

/// Phi(x) = P(N(0,1) <= x) = erfc(-x / sqrt 2) / 2 for every lane.
@inline(__always) @usableFromInline
func normalCDF16(_ x: Vec16) -> Vec16 {
    let z = x * Vec16(repeating: -0.70710678118654752)
    let e = erfcPositive16(abs16(z))
    // z >= 0 (x <= 0): erfc(z); z < 0: 2 - erfc(-z).
    let half = e * 0.5
    return selectNegative16(x, half, 1 - half)
}

// Sign tests and absolute value as integer bit operations on the float lanes: Swift's generic
// SIMDMask selections and abs compile to per-lane branches here; these compile to vpsrad + vpand/vpor.

/// a where x < 0 (sign bit set), else b.
@inline(__always) @usableFromInline
func selectNegative16(_ x: Vec16, _ a: Vec16, _ b: Vec16) -> Vec16 {
    let m = unsafeBitCast(x, to: SIMD16<Int32>.self) &>> 31
    let ai = unsafeBitCast(a, to: SIMD16<Int32>.self), bi = unsafeBitCast(b, to: SIMD16<Int32>.self)
    return unsafeBitCast((ai & m) | (bi & ~m), to: Vec16.self)
}

@inline(__always) @usableFromInline
func abs16(_ x: Vec16) -> Vec16 {
    unsafeBitCast(unsafeBitCast(x, to: SIMD16<Int32>.self) & 0x7FFF_FFFF, to: Vec16.self)
}

/// Loads `count` (< 16) floats into a vector padded with `pad`.
@inline(__always) @usableFromInline
func loadPartial(_ p: UnsafePointer<Float>, _ count: Int, pad: Float = 0) -> Vec16 {
    var v = Vec16(repeating: pad)
    for i in 0..<count { v[i] = p[i] }
    return v
}

@inline(__always) @usableFromInline
func storePartial(_ v: Vec16, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
    for i in 0..<count { p[i] = v[i] }
}

@inline(__always) @usableFromInline
func load16(_ p: UnsafePointer<Float>) -> Vec16 {
    UnsafeRawPointer(p).loadUnaligned(as: Vec16.self)
}

@inline(__always) @usableFromInline
func store16(_ v: Vec16, _ p: UnsafeMutablePointer<Float>) {
    UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vec16.self)
}

/// Applies `f` to `n` values, 16 lanes at a time (`out` may alias `input`).
@inline(__always) @usableFromInline
func map16(_ out: UnsafeMutablePointer<Float>, _ input: UnsafePointer<Float>, _ n: Int,
           _ f: (Vec16) -> Vec16) {
    var i = 0
    while i + 16 <= n { store16(f(load16(input + i)), out + i); i += 16 }
    if i < n { storePartial(f(loadPartial(input + i, n - i)), out + i, n - i) }
}

/// Vectorised e^x over a buffer (exposed for tests and the softmax).
public func expVectorized(_ out: UnsafeMutablePointer<Float>, _ input: UnsafePointer<Float>, _ n: Int) {
    map16(out, input, n, exp16)
}
