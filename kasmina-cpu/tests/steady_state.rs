//! Steady-state calls do not allocate: scratch lives in the layer.
//!
//! A counting global allocator wraps the system one; after warm-up calls, many
//! forward/backward calls must not allocate per call. (The rayon pool may
//! allocate now and then for its own queues; the bound allows that, not one
//! allocation per call.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use kasmina_core::{Backend, BlueprintType, DType, HostTensorData, LayerConfig, LayerState, LifecycleState};
use kasmina_cpu::CpuBackend;

struct Counting;

static ALLOCS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn forward_and_backward_do_not_allocate_per_call_once_warm() {
    let (b, h, s) = (600, 512, 8);
    let mut st = LayerState::new(LayerConfig::new(h, s).unwrap()).unwrap();
    for i in 0..4 {
        st.seeds.lifecycle[i] = LifecycleState::Grafting;
        st.seeds.blueprint_type[i] = BlueprintType::ALL[i];
        st.seeds.alpha[i] = 0.5;
    }
    let be = CpuBackend::with_threads(2).unwrap();
    let mut layer = be.create_layer(&st).unwrap();
    let xs: Vec<f32> = (0..b * h).map(|i| (i % 97) as f32 * 0.01 - 0.5).collect();
    for dtype in [DType::F32, DType::BF16] {
        let mut x = be.alloc(b, h, dtype).unwrap();
        be.write(&mut x, HostTensorData::from_f32(dtype, &xs).view()).unwrap();
        let mut y = be.alloc(b, h, dtype).unwrap();
        let mut dx = be.alloc(b, h, dtype).unwrap();
        for _ in 0..3 {
            be.forward(&mut layer, &x, &mut y).unwrap();
            be.backward(&mut layer, &x, &y, &mut dx).unwrap();
        }
        let calls = 50;
        let before = ALLOCS.load(Ordering::Relaxed);
        for _ in 0..calls {
            be.forward(&mut layer, &x, &mut y).unwrap();
            be.backward(&mut layer, &x, &y, &mut dx).unwrap();
        }
        let n = ALLOCS.load(Ordering::Relaxed) - before;
        println!("{dtype}: {n} allocations in {} calls", 2 * calls);
        assert!(n < calls / 5, "{dtype}: {n} allocations in {} calls", 2 * calls);
    }
}
