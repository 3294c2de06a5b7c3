// Two 16-bit elements per u32 word, element e in the low half when e is even.
const EPU: u32 = 2u;

fn raw_x(e: u32) -> u32 {
    return (xbuf[e >> 1u] >> ((e & 1u) * 16u)) & 0xFFFFu;
}

fn raw_g(e: u32) -> u32 {
    return (gbuf[e >> 1u] >> ((e & 1u) * 16u)) & 0xFFFFu;
}

fn ld_x(e: u32) -> f32 {
    return dec(raw_x(e));
}

fn ld_g(e: u32) -> f32 {
    return dec(raw_g(e));
}

fn st_word(w: u32, lo: u32, hi: u32) {
    obuf[w] = (lo & 0xFFFFu) | (hi << 16u);
}

// Element q (0 = low half) of a storage word.
fn dec_word(w: u32, q: u32) -> f32 {
    return dec((w >> (q * 16u)) & 0xFFFFu);
}
