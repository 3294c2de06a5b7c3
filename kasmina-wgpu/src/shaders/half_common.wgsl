// Two 16-bit elements per u32 word, element e in the low half when e is even.
const EPU: u32 = 2u;

fn raw_x(e: u32) -> u32 {
    return (xw(e >> 1u) >> ((e & 1u) * 16u)) & 0xFFFFu;
}

fn raw_g(e: u32) -> u32 {
    return (gw(e >> 1u) >> ((e & 1u) * 16u)) & 0xFFFFu;
}

fn ld_x(e: u32) -> f32 {
    return dec(raw_x(e));
}

fn ld_g(e: u32) -> f32 {
    return dec(raw_g(e));
}

// The storage word of two 16-bit elements, `lo` at the even element.
fn pack_word(lo: u32, hi: u32) -> u32 {
    return (lo & 0xFFFFu) | (hi << 16u);
}

fn st_word(w: u32, lo: u32, hi: u32) {
    ow(w, pack_word(lo, hi));
}
