// Storage of f32 activations: one element per u32 word, bits copied as they are.
const EPU: u32 = 1u;

fn raw_x(e: u32) -> u32 {
    return xbuf[e];
}

fn raw_g(e: u32) -> u32 {
    return gbuf[e];
}

fn dec(b: u32) -> f32 {
    return bitcast<f32>(b);
}

fn enc(v: f32) -> u32 {
    return bitcast<u32>(v);
}

fn ld_x(e: u32) -> f32 {
    return bitcast<f32>(xbuf[e]);
}

fn ld_g(e: u32) -> f32 {
    return bitcast<f32>(gbuf[e]);
}

// Writes one storage word; `hi` is unused for one element per word.
fn st_word(w: u32, lo: u32, hi: u32) {
    obuf[w] = lo;
}

// Element q of a storage word.
fn dec_word(w: u32, q: u32) -> f32 {
    return bitcast<f32>(w);
}
