//! The layer on files, for tools in other languages: NPY activations in and
//! out (through `npyz`), parameter gradients as safetensors (SPEC 7), telemetry
//! as JSON (SPEC 5.2). Every check happens before anything is written, and
//! every write is atomic, so a refused input leaves existing files untouched.

use std::path::Path;

use half::{bf16, f16};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{DType, ParamGrads};
use npyz::{TypeChar, WriterBuilder};

use kasmina::{Error, Result};

/// A 2-D activation `[rows, cols]` read from an NPY file.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows (B).
    pub rows: usize,
    /// Columns (H).
    pub cols: usize,
    /// The values, row-major, in the file's dtype (f64 files are rounded to f32).
    pub data: HostTensorData,
}

impl Matrix {
    /// The values rounded to `dtype` (round to nearest even; f32 is exact for f16 and bf16
    /// inputs), reusing the matrix's memory when it already holds `dtype`.
    pub fn into_dtype(self, dtype: DType) -> HostTensorData {
        if self.data.view().dtype() == dtype { self.data } else { HostTensorData::from_f32(dtype, &self.data.to_f32()) }
    }
}

/// The first bytes of an NPY file that hold its header (magic, version, length field, header).
const NPY_PREAMBLE: usize = 12;

/// Reads an NPY file of floats (`f2`, `f4` or `f8`, either byte order, C or
/// Fortran order) holding a `[rows, width]` matrix, or a vector of `width`
/// values (one row). Any other shape, dtype or a truncated file is an error
/// naming the file and what was wrong.
///
/// The header is read and checked first (shape, dtype, and that the file holds exactly the
/// bytes the shape declares), then the values are read from the file straight into the
/// matrix: the memory used is the matrix's (f64 files: their f32 rounding) plus a constant.
pub fn read_npy_matrix(path: &Path, width: usize) -> Result<Matrix> {
    use std::io::{Read, Seek};
    let bad = |m: String| Error::bad_input(path, m);
    let io = |e: std::io::Error| Error::io(path, e);
    let mut file = std::fs::File::open(path).map_err(io)?;
    let file_len = file.metadata().map_err(io)?.len();
    // The header: its length field says how much more to read (at most 4 GiB by the format).
    let mut head = vec![0u8; NPY_PREAMBLE.min(file_len as usize)];
    file.read_exact(&mut head).map_err(io)?;
    let Some((start, end)) = npy_header_range_len(&head) else {
        return Err(bad("not a valid NPY file: no NPY preamble".into()));
    };
    if end as u64 > file_len || end < NPY_PREAMBLE || end - start > NPY_MAX_HEADER {
        return Err(bad(format!(
            "not a valid NPY file: a header of {} bytes does not fit the file or the {NPY_MAX_HEADER}-byte limit",
            end.saturating_sub(start)
        )));
    }
    head.resize(end, 0);
    file.read_exact(&mut head[NPY_PREAMBLE..]).map_err(io)?;
    // The header is checked against NumPy's own format before the NPY reader sees it: its
    // general Python-literal parser takes exponential time on some crafted headers, and it
    // multiplies the declared shape without checking for overflow.
    let text =
        std::str::from_utf8(&head[start..end]).map_err(|_| bad("not a valid NPY file: header is not text".into()))?;
    let declared = parse_npy_header(text).map_err(|e| bad(format!("not a valid NPY file: {e}")))?;
    if declared.shape.iter().try_fold(1u64, |n, d| n.checked_mul(*d)).is_none() {
        return Err(bad(format!("shape {:?} overflows the size of any file", declared.shape)));
    }
    // The NPY reader, over the whole file, parses the (now checked) header once more for the
    // dtype and then streams the values.
    file.rewind().map_err(io)?;
    let npy =
        npyz::NpyFile::new(std::io::BufReader::new(file)).map_err(|e| bad(format!("not a valid NPY file: {e}")))?;
    let shape = declared
        .shape
        .iter()
        .map(|d| usize::try_from(*d))
        .collect::<std::result::Result<Vec<usize>, _>>()
        .map_err(|_| bad(format!("shape {:?} does not fit this machine's sizes", declared.shape)))?;
    let (rows, cols) = match shape.as_slice() {
        [r, c] => (*r, *c),
        [c] => (1, *c),
        _ => return Err(bad(format!("expected a 2-D array [rows, {width}], got shape {shape:?}"))),
    };
    if cols != width {
        return Err(bad(format!(
            "expected width {width} (the state's hidden_dim), got shape {shape:?}: the last axis must be {width}"
        )));
    }
    let fortran = declared.fortran && rows > 1;
    let size = match npy.dtype() {
        npyz::DType::Plain(ts) if ts.type_char() == TypeChar::Float => ts.size_field(),
        _ => {
            return Err(bad(format!("unsupported dtype {}: expected floats (f2, f4 or f8)", declared.descr)));
        }
    };
    // The data must be exactly what the shape declares, checked before anything is allocated:
    // a shape whose element or byte count overflows, or that needs more bytes than the file
    // holds, is refused here (the reader below would multiply the shape without checking).
    let need = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(size as usize))
        .ok_or_else(|| bad(format!("shape {shape:?} of {size}-byte floats overflows the size of any file")))?;
    let have = file_len - head.len() as u64;
    if need as u64 != have {
        return Err(bad(format!(
            "shape {shape:?} of {size}-byte floats needs {need} data bytes, the file holds {have}"
        )));
    }
    let n = rows * cols;
    let data = match size {
        2 => HostTensorData::F16(read_values::<f16, f16>(npy, n, |v| v, path)?),
        4 => HostTensorData::F32(read_values::<f32, f32>(npy, n, |v| v, path)?),
        8 => HostTensorData::F32(read_values::<f64, f32>(npy, n, |v| v as f32, path)?),
        n => return Err(bad(format!("unsupported float size of {n} bytes: expected f2, f4 or f8"))),
    };
    let data = if fortran { transpose(data, rows, cols) } else { data };
    Ok(Matrix { rows, cols, data })
}

/// The `n` values of an NPY file's data, each converted by `conv`, into a vector allocated
/// fallibly (its size came from the file).
fn read_values<T: npyz::Deserialize, U: Copy + Default>(
    npy: npyz::NpyFile<impl std::io::Read>,
    n: usize,
    conv: impl Fn(T) -> U,
    path: &Path,
) -> Result<Vec<U>> {
    let read_err =
        |e: std::io::Error| Error::bad_input(path, format!("cannot read the data ({e}); is the file truncated?"));
    let mut out = kasmina_core::error::try_filled(n, U::default(), &format!("the values of {}", path.display()))?;
    let mut filled = 0;
    let values =
        npy.data::<T>().map_err(|e| Error::bad_input(path, format!("cannot read its values as floats: {e}")))?;
    for (slot, v) in out.iter_mut().zip(values) {
        *slot = conv(v.map_err(read_err)?);
        filled += 1;
    }
    if filled != n {
        return Err(Error::bad_input(path, format!("holds {filled} values, its shape declares {n}")));
    }
    Ok(out)
}

/// Where an NPY file's header text starts and ends, from its first [`NPY_PREAMBLE`] bytes
/// (the length field: 2 bytes in version 1, 4 in versions 2 and 3). `None` when they are
/// too few or not an NPY preamble.
fn npy_header_range_len(bytes: &[u8]) -> Option<(usize, usize)> {
    if bytes.get(..6)? != b"\x93NUMPY" {
        return None;
    }
    let (start, len) = if *bytes.get(6)? == 1 {
        (10, usize::from(u16::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?])))
    } else {
        let len = u32::from_le_bytes([*bytes.get(8)?, *bytes.get(9)?, *bytes.get(10)?, *bytes.get(11)?]);
        (12, usize::try_from(len).ok()?)
    };
    Some((start, start.checked_add(len)?))
}

/// The longest NPY header read (NumPy's own `max_header_size` default): a float matrix needs
/// well under 200 bytes.
const NPY_MAX_HEADER: usize = 10_000;

/// The fields of an NPY header, as NumPy writes them.
#[derive(Debug, Clone, PartialEq)]
struct NpyHeader {
    descr: String,
    fortran: bool,
    shape: Vec<u64>,
}

/// Parses an NPY header dict the way NumPy writes it: the keys `descr` (a string),
/// `fortran_order` (`True` or `False`) and `shape` (a tuple of integers), each once, in any
/// order, either quote style, free whitespace, an optional trailing comma. Anything else is an
/// error saying what was found; the parse is linear in the header's length.
fn parse_npy_header(text: &str) -> std::result::Result<NpyHeader, String> {
    let mut p = HeaderCursor { s: text.as_bytes(), i: 0 };
    p.expect(b'{')?;
    let (mut descr, mut fortran, mut shape) = (None, None, None);
    while !p.eat(b'}') {
        let key = p.string()?;
        p.expect(b':')?;
        match key.as_str() {
            "descr" if descr.is_none() => descr = Some(p.string()?),
            "fortran_order" if fortran.is_none() => fortran = Some(p.boolean()?),
            "shape" if shape.is_none() => shape = Some(p.tuple()?),
            k => return Err(format!("unexpected or repeated key '{k}' in the header")),
        }
        if !p.eat(b',') {
            p.expect(b'}')?;
            break;
        }
    }
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("unexpected text after the header's dict at byte {}", p.i));
    }
    Ok(NpyHeader {
        descr: descr.ok_or("the header has no 'descr'")?,
        fortran: fortran.ok_or("the header has no 'fortran_order'")?,
        shape: shape.ok_or("the header has no 'shape'")?,
    })
}

/// A position in an NPY header's text; every read skips the whitespace before it.
struct HeaderCursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl HeaderCursor<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(|c| c.is_ascii_whitespace()) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.ws();
        let hit = self.s.get(self.i) == Some(&c);
        if hit {
            self.i += 1;
        }
        hit
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) { Ok(()) } else { Err(format!("expected '{}' at byte {} of the header", c as char, self.i)) }
    }

    /// A quoted string without escapes (NumPy's keys and dtype strings need none).
    fn string(&mut self) -> std::result::Result<String, String> {
        self.ws();
        let q = *self
            .s
            .get(self.i)
            .filter(|q| **q == b'\'' || **q == b'"')
            .ok_or_else(|| format!("expected a quoted string at byte {} of the header", self.i))?;
        let start = self.i + 1;
        let len = self.s[start..].iter().position(|c| *c == q).ok_or("an unterminated string in the header")?;
        self.i = start + len + 1;
        String::from_utf8(self.s[start..start + len].to_vec()).map_err(|_| "a string in the header is not text".into())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.ws();
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.i..].starts_with(word) {
                self.i += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at byte {} of the header", self.i))
    }

    /// `(d0, d1, ...)` of non-negative integers (a trailing `L` of Python 2 allowed).
    fn tuple(&mut self) -> std::result::Result<Vec<u64>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        while !self.eat(b')') {
            self.ws();
            let start = self.i;
            while self.s.get(self.i).is_some_and(u8::is_ascii_digit) {
                self.i += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default();
            let d = digits.parse::<u64>().map_err(|_| format!("expected a dimension at byte {start} of the header"))?;
            if self.s.get(self.i) == Some(&b'L') {
                self.i += 1;
            }
            dims.push(d);
            if dims.len() > 32 {
                return Err("a shape of more than 32 dimensions".into());
            }
            if !self.eat(b',') {
                self.expect(b')')?;
                break;
            }
        }
        Ok(dims)
    }
}

/// Column-major `[rows, cols]` to row-major.
fn transpose(data: HostTensorData, rows: usize, cols: usize) -> HostTensorData {
    fn t<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
        (0..rows * cols).map(|k| v[(k % cols) * rows + k / cols]).collect()
    }
    match data {
        HostTensorData::F32(v) => HostTensorData::F32(t(&v, rows, cols)),
        HostTensorData::F16(v) => HostTensorData::F16(t(&v, rows, cols)),
        HostTensorData::BF16(v) => HostTensorData::BF16(t(&v, rows, cols)),
    }
}

/// The bytes of an NPY file holding `data` as `[rows, cols]`: `<f4` for f32,
/// `<f2` for f16, and `<f4` for bf16 (NumPy has no bfloat16; widening is exact).
pub fn npy_bytes(data: &HostTensorData, rows: usize, cols: usize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let shape = [rows as u64, cols as u64];
    let io = |e: std::io::Error| Error::Invalid(format!("cannot encode NPY: {e}"));
    match data {
        HostTensorData::F32(v) => {
            let mut w =
                npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        HostTensorData::F16(v) => {
            let mut w =
                npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            w.extend(v.iter().copied()).map_err(io)?;
            w.finish().map_err(io)?;
        }
        HostTensorData::BF16(v) => {
            let mut w =
                npyz::WriteOptions::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            w.extend(v.iter().map(|x: &bf16| x.to_f32())).map_err(io)?;
            w.finish().map_err(io)?;
        }
    }
    Ok(out)
}

/// The bytes of a parameter-gradient file (SPEC 7): safetensors with the f32
/// tensors `dweights [S, C]`, `dscales [S]` and `grad_norm [S]`.
pub fn param_grads_bytes(grads: &ParamGrads, num_seeds: usize, chunk: usize) -> Result<Vec<u8>> {
    use safetensors::tensor::{Dtype, TensorView};
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let tensors = [
        ("dweights", vec![num_seeds, chunk], le(&grads.dweights)),
        ("dscales", vec![num_seeds], le(&grads.dscales)),
        ("grad_norm", vec![num_seeds], le(&grads.grad_norm)),
    ];
    let mut views = Vec::new();
    for (name, shape, data) in &tensors {
        let v = TensorView::new(Dtype::F32, shape.clone(), data)
            .map_err(|e| Error::Invalid(format!("parameter gradient '{name}': {e}")))?;
        views.push((name.to_string(), v));
    }
    safetensors::serialize(views, None).map_err(|e| Error::Invalid(format!("cannot encode parameter gradients: {e}")))
}

/// Reads a parameter-gradient file written by [`param_grads_bytes`].
pub fn read_param_grads(path: &Path) -> Result<ParamGrads> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::bad_input(path, format!("not a safetensors file: {e}")))?;
    let get = |name: &str| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|_| Error::bad_input(path, format!("missing tensor '{name}'")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(Error::bad_input(path, format!("tensor '{name}' is {:?}, expected F32", t.dtype())));
        }
        Ok(t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    Ok(ParamGrads { dweights: get("dweights")?, dscales: get("dscales")?, grad_norm: get("grad_norm")? })
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    kasmina_core::snapshot::write_atomic(path, bytes).map_err(Error::from)
}

/// Writes a command's output files together (see [`kasmina_core::snapshot::write_all_atomic`]):
/// a failure leaves every target as it was.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    kasmina_core::snapshot::write_all_atomic(files).map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trips_f32_and_f16() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let data = HostTensorData::F32(vec![1.0, -2.5, 3.0, f32::INFINITY, 0.0, 7.0]);
        write_atomic(&p, &npy_bytes(&data, 2, 3).unwrap()).unwrap();
        let m = read_npy_matrix(&p, 3).unwrap();
        assert_eq!((m.rows, m.cols), (2, 3));
        assert_eq!(m.data, data);
        let h = HostTensorData::from_f32(DType::F16, &[0.5, 1.5]);
        write_atomic(&p, &npy_bytes(&h, 1, 2).unwrap()).unwrap();
        assert_eq!(read_npy_matrix(&p, 2).unwrap().data, h);
    }

    #[test]
    fn wrong_width_and_garbage_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        write_atomic(&p, &npy_bytes(&HostTensorData::F32(vec![0.0; 6]), 2, 3).unwrap()).unwrap();
        let e = read_npy_matrix(&p, 4).unwrap_err().to_string();
        assert!(e.contains("expected width 4"), "{e}");
        std::fs::write(&p, b"not an npy file").unwrap();
        assert!(read_npy_matrix(&p, 3).unwrap_err().to_string().contains("not a valid NPY"));
        let mut b = npy_bytes(&HostTensorData::F32(vec![0.0; 6]), 2, 3).unwrap();
        b.truncate(b.len() - 3);
        std::fs::write(&p, &b).unwrap();
        assert!(read_npy_matrix(&p, 3).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 600, ..Default::default() })]

        /// Whatever shape an NPY header declares (up to u64::MAX per axis, one or two axes, every
        /// float size) and however many data bytes follow, the reader accepts the file exactly when
        /// its width is the layer's and its data are the bytes the shape needs; otherwise it is an
        /// error, before anything of the shape's size is allocated.
        #[test]
        fn an_npy_file_is_read_exactly_when_its_shape_matches_its_bytes(
            rows in proptest::prop_oneof![0u64..6, proptest::prelude::any::<u64>(), (u64::MAX - 2)..=u64::MAX],
            cols in proptest::prop_oneof![proptest::strategy::Just(8u64), 0u64..20, proptest::prelude::any::<u64>()],
            one_axis in proptest::prelude::any::<bool>(),
            size in proptest::sample::select(vec![2u64, 4, 8]),
            fortran in proptest::prelude::any::<bool>(),
            len in 0usize..160,
            exact in proptest::prelude::any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let p = dir.path().join("x.npy");
            let shape = if one_axis { format!("({cols},)") } else { format!("({rows}, {cols})") };
            let order = if fortran { "True" } else { "False" };
            let header = format!("{{'descr': '<f{size}', 'fortran_order': {order}, 'shape': {shape}, }}");
            let rows = if one_axis { 1 } else { rows };
            let need = (rows as u128).checked_mul(cols as u128).and_then(|n| n.checked_mul(size as u128));
            // Half the cases carry exactly the bytes the shape needs, where that is small.
            let len = match need {
                Some(n) if exact && n <= 4096 => n as usize,
                _ => len,
            };
            std::fs::write(&p, npy_with(&header, &vec![0u8; len])).unwrap();
            let fits = usize::try_from(rows).is_ok() && usize::try_from(cols).is_ok();
            let ok = fits && cols == 8 && need == Some(len as u128);
            match read_npy_matrix(&p, 8) {
                Ok(m) => {
                    proptest::prop_assert!(ok, "{header} with {len} bytes was read");
                    proptest::prop_assert_eq!((m.rows as u64, m.cols), (rows, 8));
                    proptest::prop_assert_eq!(Some(m.data.view().len() as u128 * size as u128), need);
                }
                Err(e) => proptest::prop_assert!(!ok, "{header} with {len} bytes: {e}"),
            }
        }
    }

    /// An NPY file with `header` (a Python dict literal) and `data` bytes, version 1.
    fn npy_with(header: &str, data: &[u8]) -> Vec<u8> {
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut out = b"\x93NUMPY\x01\x00".to_vec();
        out.extend_from_slice(&(h.len() as u16).to_le_bytes());
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn shapes_that_overflow_or_exceed_the_file_are_refused_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let cases = [
            // Fortran order, (2^61 + 1) x 8 f4 with 32 data bytes: the element count wraps.
            ("{'descr': '<f4', 'fortran_order': True, 'shape': (2305843009213693953, 8), }", 32, "overflows"),
            // C order, 2^61 x 8 f4 with no data: the byte count wraps.
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2305843009213693952, 8), }", 0, "overflows"),
            // f2, 2^62 x 8.
            ("{'descr': '<f2', 'fortran_order': False, 'shape': (4611686018427387904, 8), }", 0, "overflows"),
            // No overflow, but far more than the file holds.
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 8), }", 64, "needs"),
            // Extra bytes after the declared data.
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }", 68, "needs 64 data bytes"),
        ];
        for (header, n, needle) in cases {
            std::fs::write(&p, npy_with(header, &vec![0u8; n])).unwrap();
            let e = read_npy_matrix(&p, 8).unwrap_err().to_string();
            assert!(e.contains(needle), "{header}: {e}");
        }
        // The same writer gives a file the reader accepts when the sizes agree.
        std::fs::write(&p, npy_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }", &[0u8; 64]))
            .unwrap();
        let m = read_npy_matrix(&p, 8).unwrap();
        assert_eq!((m.rows, m.cols, m.data.view().len()), (2, 8, 16));
    }

    #[test]
    fn headers_that_do_not_fit_the_file_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        let good = npy_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }", &[0u8; 64]);
        // Shorter than the preamble, a header length past the end, a header length shorter than
        // the preamble itself, and every truncation: errors, never a panic.
        let mut past = good.clone();
        past[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        let mut short = good.clone();
        short[8..10].copy_from_slice(&1u16.to_le_bytes());
        for (bytes, what) in [(good[..5].to_vec(), "5 bytes"), (past, "length past the end"), (short, "length 1")] {
            std::fs::write(&p, &bytes).unwrap();
            let e = read_npy_matrix(&p, 8).unwrap_err().to_string();
            assert!(e.contains("NPY") || e.contains("needs"), "{what}: {e}");
        }
        for cut in 0..good.len() {
            std::fs::write(&p, &good[..cut]).unwrap();
            assert!(read_npy_matrix(&p, 8).is_err(), "truncated to {cut} bytes");
        }
        // f64 and Fortran-order files read straight from the file come out row-major f32.
        let v: Vec<f64> = (0..6).map(|i| i as f64 * 0.5).collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(&p, npy_with("{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }", &bytes)).unwrap();
        let m = read_npy_matrix(&p, 3).unwrap();
        assert_eq!(m.data, HostTensorData::F32(vec![0.0, 1.0, 2.0, 0.5, 1.5, 2.5]));
    }

    #[test]
    fn npy_headers_parse_as_numpy_writes_them_and_nothing_else() {
        let h = |descr: &str, fortran: bool, shape: &[u64]| NpyHeader {
            descr: descr.into(),
            fortran,
            shape: shape.to_vec(),
        };
        for (text, want) in [
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), }", h("<f4", false, &[2, 8])),
            ("{\"shape\":(3,),\"descr\":\">f8\",\"fortran_order\":True}   \n", h(">f8", true, &[3])),
            ("{'descr': '<f2', 'fortran_order': False, 'shape': (), }", h("<f2", false, &[])),
            ("{'descr': '<f4', 'fortran_order': False, 'shape': (4L, 5L)}", h("<f4", false, &[4, 5])),
        ] {
            assert_eq!(parse_npy_header(text), Ok(want), "{text}");
        }
        for text in [
            "",
            "{",
            "{'descr': '<f4', 'fortran_order': False}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), 'extra': 1}",
            "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -8)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': ((2,),)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2+1,)}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,)} trailing",
            "{'descr': '<f4, 'fortran_order': False, 'shape': (2,)}",
        ] {
            assert!(parse_npy_header(text).is_err(), "accepted {text:?}");
        }
        // Deep nesting is refused (a tuple holds integers only).
        let deep =
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {}1{} }}", "(".repeat(5000), ")".repeat(5000));
        assert!(parse_npy_header(&deep).is_err());
    }

    /// Found by `scripts/fuzz.sh` (target `npy`): a header of nested braces on which the NPY
    /// reader's general Python-literal parser never finished. Refused by the header check.
    #[test]
    fn a_header_of_nested_braces_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.npy");
        std::fs::write(&p, include_bytes!("../tests/data/npy-header-nested-braces.npy")).unwrap();
        let e = read_npy_matrix(&p, 8).unwrap_err().to_string();
        assert!(e.contains("not a valid NPY file"), "{e}");
    }
}
