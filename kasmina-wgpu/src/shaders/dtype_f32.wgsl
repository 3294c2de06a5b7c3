// Storage of f32 activations: one element per u32 word, bits copied as they are.
const EPU: u32 = 1u;

fn raw_x(e: u32) -> u32 {
    return xw(e);
}

fn raw_g(e: u32) -> u32 {
    return gw(e);
}

fn dec(b: u32) -> f32 {
    return bitcast<f32>(b);
}

fn enc(v: f32) -> u32 {
    return bitcast<u32>(v);
}

fn ld_x(e: u32) -> f32 {
    return bitcast<f32>(xw(e));
}

fn ld_g(e: u32) -> f32 {
    return bitcast<f32>(gw(e));
}

// Writes one storage word; `hi` is unused for one element per word.
fn st_word(w: u32, lo: u32, hi: u32) {
    ow(w, lo);
}

// The storage word of one element (`hi` is unused).
fn pack_word(lo: u32, hi: u32) -> u32 {
    return lo;
}

// Both elements of a storage word (one here; the second is unused).
fn dec2(w: u32) -> vec2<f32> {
    return vec2<f32>(bitcast<f32>(w), 0.0);
}
