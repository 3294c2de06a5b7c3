//! The NPY reader on arbitrary files: never a panic; what it accepts has the shape it says,
//! and writes back to the same values.
#![no_main]

use kasmina_cli::files::{npy_bytes, read_npy_matrix};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&w, file)) = data.split_first() else { return };
    let width = usize::from(w % 16) + 1;
    let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut tmp, file).expect("write");
    if let Ok(m) = read_npy_matrix(tmp.path(), width) {
        assert_eq!(m.cols, width);
        assert_eq!(m.data.view().len(), m.rows * m.cols);
        let bytes = npy_bytes(&m.data, m.rows, m.cols).expect("encode");
        std::fs::write(tmp.path(), &bytes).expect("rewrite");
        let again = read_npy_matrix(tmp.path(), width).expect("what was written reads");
        assert_eq!((again.rows, again.cols), (m.rows, m.cols));
    }
});
