//! Every output element is written (SPEC 5.1): `y` and `dx` are filled with a
//! signalling-NaN poison before each call (as in every case of the suite),
//! and here every element is checked to no longer hold it, on shapes where a
//! kernel's tail handling is most likely to skip elements.

use kasmina_core::{Backend, LayerConfig};

use super::{Ctx, all_modes, build_state, layer, locator, run_backward, run_forward};
use crate::data::{self, Gen};

pub(crate) fn run<B: Backend>(ctx: &mut Ctx<'_, B>) {
    let backend = ctx.backend;
    let shapes: &[(usize, usize, usize)] = if ctx.full() {
        &[(1, 37, 4099), (7, 3, 1031), (4099, 1, 1031), (33, 44, 2053), (1000, 44, 761)]
    } else {
        &[(1, 37, 13), (7, 3, 1), (4099, 1, 3), (33, 44, 13), (5, 44, 17)]
    };
    let modes = all_modes();
    for dtype in ctx.dtypes("*") {
        for &(c, s, rows) in shapes {
            ctx.case(&format!("C={c}/S={s}/B={rows}"), Some(dtype), |chk| {
                let mut rng = Gen::new(0x9000 + c as u64);
                let specs: Vec<_> = (0..s).map(|i| modes[(i * 5) % modes.len()]).collect();
                let config = LayerConfig::new(s * c, s)?;
                let st = build_state(config, &specs, &mut rng)?;
                let n = rows * config.hidden_dim;
                let x = rng.tensor(dtype, n, 2.0);
                let g = rng.tensor(dtype, n, 1.0);
                let mut l = layer(backend, &st)?;
                let loc = locator(config.hidden_dim, c);
                let poison = data::poison_bits(dtype);
                let y = run_forward(&mut l, &x, rows)?;
                let bad: Vec<usize> = (0..n).filter(|i| data::bits(&y, *i) == poison).collect();
                chk.exact("y written", bad.len(), || format!("{} still holds the poison", loc(bad[0])));
                let (dx, _) = run_backward(&mut l, &x, &g, rows)?;
                let bad: Vec<usize> = (0..n).filter(|i| data::bits(&dx, *i) == poison).collect();
                chk.exact("dx written", bad.len(), || format!("{} still holds the poison", loc(bad[0])));
                Ok(())
            });
        }
    }
}
