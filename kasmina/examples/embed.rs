//! Embedding a Kasmina layer in your own program (the README's example):
//! `cargo run --release -p kasmina --example embed`.

use kasmina::{BlueprintType, EpochSignals, GraftingStrategy, HostData, HostDataMut, KasminaLayer, LayerConfig};

fn main() -> Result<(), kasmina::Error> {
    let mut layer = KasminaLayer::new(kasmina::cpu::CpuBackend::new()?, LayerConfig::new(4096, 64)?)?;
    layer.request_germination(3, 1, BlueprintType::Mlp, GraftingStrategy::FixedRamp)?;
    let (x, mut y) = (vec![0.5f32; 8 * 4096], vec![0.0f32; 8 * 4096]);
    layer.forward_host(HostData::F32(&x), HostDataMut::F32(&mut y))?; // or forward() on device tensors
    let report = layer.end_epoch(&EpochSignals::none())?; // telemetry + lifecycle step
    let path = std::env::temp_dir().join("kasmina-embed.safetensors");
    layer.save(&path)?; // atomic, checksummed
    println!(
        "seed 3: {} finite values, mean {}, now {}; snapshot {} (crc32 {:08x})",
        report.seeds[3].count,
        report.seeds[3].normal.mean,
        layer.state().seeds.lifecycle[3],
        path.display(),
        layer.checksum()
    );
    Ok(())
}
