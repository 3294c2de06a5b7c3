// bf16 storage (the top half of an f32), rounded to nearest even on write; NaN
// stays a quiet NaN with its sign (as `half::bf16::from_f32`).
fn dec(h: u32) -> f32 {
    return bitcast<f32>(h << 16u);
}

fn enc(v: f32) -> u32 {
    let x = bitcast<u32>(v);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
        return ((x >> 16u) | 0x40u) & 0xFFFFu;
    }
    return ((x + 0x7FFFu + ((x >> 16u) & 1u)) >> 16u) & 0xFFFFu;
}

// Both halves of a storage word (low half first): exact shifts.
fn dec2(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w << 16u), bitcast<f32>(w & 0xFFFF0000u));
}
