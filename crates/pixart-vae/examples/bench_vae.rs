//! Times one SDXL VAE decode (full architecture, random weights, f32, CPU) and reports the
//! process's peak RSS. One size per process.
//!
//! cargo run --release -p pixart-vae --example bench_vae -- SIZE_PX [off|auto|TILE:OVERLAP]
use pixart_vae::{bench_vae_decode, TileConfig, Tiling};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let size: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(512);
    let tiling = match args.get(2).map(String::as_str) {
        None | Some("off") => Tiling::Off,
        Some("auto") => Tiling::Auto,
        Some(spec) => {
            let (t, o) = spec
                .split_once(':')
                .ok_or("tiling: off, auto or TILE:OVERLAP")?;
            Tiling::On(TileConfig {
                tile_latent: t.parse()?,
                overlap_latent: o.parse()?,
            })
        }
    };
    let r = bench_vae_decode(size, tiling, &mut |done, total, s| {
        eprintln!(
            "tile {done}/{total} at {s:.1} s, peak RSS {:.2} GiB",
            gib(pixart_core::mem::peak_rss_bytes())
        );
    })?;
    println!(
        "size {size} px, tiling {tiling:?}: {:.2} s, {} tiles, peak RSS {:.2} GiB",
        r.seconds,
        r.tiles,
        gib(r.peak_rss_bytes)
    );
    Ok(())
}

fn gib(b: Option<u64>) -> f64 {
    b.unwrap_or(0) as f64 / (1u64 << 30) as f64
}
