//! Benchmarks of the Kasmina backends (criterion targets under benches/).
