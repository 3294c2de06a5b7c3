//! The forward pass on files, as `kasmina forward` runs it, through library calls: a snapshot
//! and an NPY input (split from the fuzz input by its first two bytes) are loaded and checked,
//! the layer runs on the CPU, its output is encoded as NPY. Never a panic; an accepted input
//! gives an output of its shape.
#![no_main]

use kasmina_cli::files::{npy_bytes, read_npy_matrix};
use kasmina_core::backend::HostTensorData;
use kasmina_core::{KasminaLayer, snapshot};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<2>() else { return };
    let split = usize::from(u16::from_le_bytes(*len)).min(rest.len());
    let (snap, npy) = rest.split_at(split);
    let Ok(state) = snapshot::from_bytes(snap) else { return };
    let h = state.config.hidden_dim;
    if h > 1 << 16 {
        return;
    }
    let mut tmp = tempfile::NamedTempFile::new().expect("temp file");
    std::io::Write::write_all(&mut tmp, npy).expect("write");
    let Ok(m) = read_npy_matrix(tmp.path(), h) else { return };
    if m.rows * h > 1 << 20 {
        return;
    }
    let rows = m.rows;
    let x = m.into_dtype(kasmina_core::DType::F32);
    let backend = kasmina_cpu::CpuBackend::new().expect("the CPU backend opens");
    let mut layer = KasminaLayer::from_state(backend, state).expect("an accepted state runs");
    let mut y = HostTensorData::zeros(kasmina_core::DType::F32, rows * h);
    layer.forward_host(x.view(), y.view_mut()).expect("forward on an accepted input");
    let bytes = npy_bytes(&y, rows, h).expect("encode");
    assert!(bytes.len() >= rows * h * 4);
});
