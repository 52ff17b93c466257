//! The checker on renders of every scene (90 colour/shape/background combinations × 2 sizes ×
//! 5 positions, with the training jitter), clean and degraded with Gaussian blur and noise, at
//! 64 and 128 px. Prints the accuracy table (`cargo test -p pixart-demo --test checker_accuracy
//! -- --nocapture`); docs/demo-dataset.md quotes it.
use pixart_demo::vocab::{JITTER_OFFSET, JITTER_SCALE};
use pixart_demo::{check, render, Attributes, Combo, Geometry, Position, Size};
use pixart_pipeline::RgbImage;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};

fn scenes(rng: &mut StdRng) -> Vec<(Attributes, Geometry)> {
    let mut v = Vec::new();
    for c in Combo::all() {
        for size in Size::ALL {
            for position in Position::ALL {
                let a = Attributes {
                    shape: c.shape,
                    color: c.color,
                    background: c.background,
                    size,
                    position,
                };
                let n = Geometry::nominal(&a);
                let g = Geometry {
                    cx: n.cx + rng.random_range(-JITTER_OFFSET..=JITTER_OFFSET),
                    cy: n.cy + rng.random_range(-JITTER_OFFSET..=JITTER_OFFSET),
                    extent: n.extent * (1.0 + rng.random_range(-JITTER_SCALE..=JITTER_SCALE)),
                };
                v.push((a, g));
            }
        }
    }
    v
}

/// Separable Gaussian blur (σ in pixels, edges clamped), then additive Gaussian noise (σ in
/// 0..255 units), rounded and clamped to u8.
fn degrade(img: &RgbImage, blur: f64, noise: f64, rng: &mut StdRng) -> RgbImage {
    let (w, h) = (img.width, img.height);
    let mut px: Vec<f64> = img.data.iter().map(|&v| f64::from(v)).collect();
    if blur > 0.0 {
        let r = (3.0 * blur).ceil() as i64;
        let k: Vec<f64> = (-r..=r)
            .map(|i| (-(i * i) as f64 / (2.0 * blur * blur)).exp())
            .collect();
        let sum: f64 = k.iter().sum();
        let k: Vec<f64> = k.iter().map(|v| v / sum).collect();
        for horizontal in [true, false] {
            let src = px.clone();
            for y in 0..h as i64 {
                for x in 0..w as i64 {
                    for c in 0..3 {
                        let mut acc = 0.0;
                        for (j, kv) in k.iter().enumerate() {
                            let o = j as i64 - r;
                            let (sx, sy) = if horizontal {
                                ((x + o).clamp(0, w as i64 - 1), y)
                            } else {
                                (x, (y + o).clamp(0, h as i64 - 1))
                            };
                            acc += kv * src[3 * (sy as usize * w + sx as usize) + c];
                        }
                        px[3 * (y as usize * w + x as usize) + c] = acc;
                    }
                }
            }
        }
    }
    let normal = Normal::new(0.0, noise.max(1e-12)).unwrap();
    RgbImage {
        width: w,
        height: h,
        data: px
            .iter()
            .map(|&v| {
                let n = if noise > 0.0 { normal.sample(rng) } else { 0.0 };
                (v + n).round().clamp(0.0, 255.0) as u8
            })
            .collect(),
    }
}

/// Accuracy per attribute: background, color, shape, size, position, all.
fn accuracy(side: usize, blur_at_64: f64, noise: f64, seed: u64) -> [f64; 6] {
    let mut rng = StdRng::seed_from_u64(seed);
    let scenes = scenes(&mut rng);
    let blur = blur_at_64 * side as f64 / 64.0;
    let mut hits = [0usize; 6];
    for (a, g) in &scenes {
        let img = render(a, g, side).unwrap();
        let img = if blur > 0.0 || noise > 0.0 {
            degrade(&img, blur, noise, &mut rng)
        } else {
            img
        };
        let c = check(&img, a).unwrap();
        for (h, ok) in hits
            .iter_mut()
            .zip([c.background, c.color, c.shape, c.size, c.position, c.all()])
        {
            *h += usize::from(ok);
        }
    }
    let acc = hits.map(|h| h as f64 / scenes.len() as f64);
    println!(
        "{side:>4} px  blur σ {blur:>4.2} px  noise σ {noise:>4.0}  n {}:  background {:.1}%  color {:.1}%  shape {:.1}%  size {:.1}%  position {:.1}%  all {:.1}%",
        scenes.len(),
        100.0 * acc[0],
        100.0 * acc[1],
        100.0 * acc[2],
        100.0 * acc[3],
        100.0 * acc[4],
        100.0 * acc[5]
    );
    acc
}

#[test]
fn clean_renders_are_read_back_exactly() {
    for side in [64, 128] {
        let acc = accuracy(side, 0.0, 0.0, 1);
        assert_eq!(acc, [1.0; 6], "{side} px");
    }
}

#[test]
fn moderate_blur_and_noise() {
    // Blur σ = 1 px at 64 px (2 px at 128) and noise σ = 20 / 255.
    for side in [64, 128] {
        let acc = accuracy(side, 1.0, 20.0, 2);
        for (i, a) in acc.iter().enumerate() {
            assert!(*a >= 0.99, "{side} px: attribute {i} at {a}");
        }
    }
}

#[test]
fn heavy_blur_and_noise() {
    // Blur σ = 2 px at 64 px (4 px at 128) and noise σ = 40 / 255: blurrier and noisier than
    // a usable generated picture. Blur this strong rounds the corners of a small square, so
    // shape is the attribute that suffers.
    let acc: Vec<[f64; 6]> = [64, 128].iter().map(|&side| accuracy(side, 2.0, 40.0, 3)).collect();
    for (side, acc) in [64, 128].iter().zip(&acc) {
        for (i, a) in acc.iter().enumerate() {
            let floor = if i == 2 || i == 5 { 0.8 } else { 0.97 };
            assert!(*a >= floor, "{side} px: attribute {i} at {a}");
        }
    }
}
