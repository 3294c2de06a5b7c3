// f16 storage converted in integer arithmetic: works on every adapter (no
// SHADER_F16 needed) and rounds to nearest even exactly like `half::f16::from_f32`
// (WGSL leaves the rounding of f32 -> f16 conversions to the implementation).

fn dec(h: u32) -> f32 {
    let sign = (h & 0x8000u) << 16u;
    let e = (h >> 10u) & 0x1Fu;
    let m = h & 0x3FFu;
    if (e == 0u) {
        // Zero or subnormal: m * 2^-24 is exact in f32.
        let v = f32(m) * 5.9604644775390625e-8;
        return bitcast<f32>(bitcast<u32>(v) | sign);
    }
    if (e == 31u) {
        return bitcast<f32>(sign | 0x7F800000u | (m << 13u));
    }
    return bitcast<f32>(sign | ((e + 112u) << 23u) | (m << 13u));
}

// Whether unpack2x16float is exact for the half `h` on every implementation:
// normal numbers and zeros. Subnormals (which an implementation may flush),
// infinities and NaNs (payloads) take the integer path.
fn half_plain(h: u32) -> bool {
    let e = h & 0x7C00u;
    return (e != 0u && e != 0x7C00u) || (h & 0x7FFFu) == 0u;
}

// Both halves of a storage word (low half first), exactly as `dec` decodes them.
fn dec2(w: u32) -> vec2<f32> {
    /*F16_UNPACK_BEGIN*/
    if (half_plain(w & 0xFFFFu) && half_plain(w >> 16u)) {
        return unpack2x16float(w);
    }
    /*F16_UNPACK_END*/
    return vec2<f32>(dec(w & 0xFFFFu), dec(w >> 16u));
}
