// f32 -> f16 bits, round to nearest even, overflow to infinity, NaN kept quiet
// with its sign and top payload bits (as `half::f16::from_f32`).
fn enc(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    let sign = (x >> 16u) & 0x8000u;
    let a = x & 0x7FFFFFFFu;
    if (a >= 0x38800000u && a < 0x47800000u) {
        // Normal f16 results (2^-14 <= |v| < 2^16): rebias the exponent and round
        // the 13 dropped bits to nearest even; a carry steps into the next
        // exponent, and from 65520 on into infinity (0x7C00), as it should.
        return sign | ((a - 0x38000000u + 0xFFFu + ((a >> 13u) & 1u)) >> 13u);
    }
    let e = (x >> 23u) & 0xFFu;
    let m = x & 0x7FFFFFu;
    if (e == 0xFFu) {
        if (m != 0u) {
            return sign | 0x7E00u | (m >> 13u);
        }
        return sign | 0x7C00u;
    }
    if (e >= 143u) {
        // |v| >= 2^16: beyond the largest finite f16 after rounding.
        return sign | 0x7C00u;
    }
    if (e >= 113u) {
        // Normal f16 range; a rounding carry may step into the next exponent or infinity.
        var h = ((e - 112u) << 10u) | (m >> 13u);
        let rem = m & 0x1FFFu;
        if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) {
            h = h + 1u;
        }
        return sign | h;
    }
    if (e < 102u) {
        return sign;
    }
    // Subnormal f16: shift the 24-bit significand right by 126 - e (14..24).
    let mm = m | 0x800000u;
    let sh = 126u - e;
    var h = mm >> sh;
    let rem = mm & ((1u << sh) - 1u);
    let halfway = 1u << (sh - 1u);
    if (rem > halfway || (rem == halfway && (h & 1u) == 1u)) {
        h = h + 1u;
    }
    return sign | h;
}
