//! Noise for the initial latents and for the samplers that inject noise at each step. It is
//! drawn here, outside the samplers, so runs are reproducible and tests can feed their own.
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

/// A seed from the clock, for requests that give none (print or return it so the run can be
/// repeated).
pub fn random_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A source of standard-normal noise, one stream per image of the batch.
pub trait NoiseSource {
    /// `len` standard-normal values from the stream of image `image`.
    fn draw(&mut self, image: usize, len: usize) -> Vec<f32>;
}

/// Image `k` draws from a `StdRng` seeded with `seed + k`: its initial latent first, then the
/// per-step noise. An image's noise does not depend on the batch size. (Not torch's RNG: the
/// same seed gives other pictures than diffusers.)
#[derive(Debug, Clone)]
pub struct SeededNoise {
    seed: u64,
    streams: Vec<StdRng>,
}

impl SeededNoise {
    pub fn new(seed: u64) -> Self {
        Self {
            seed,
            streams: Vec::new(),
        }
    }
}

impl NoiseSource for SeededNoise {
    fn draw(&mut self, image: usize, len: usize) -> Vec<f32> {
        while self.streams.len() <= image {
            let k = self.streams.len() as u64;
            self.streams.push(StdRng::seed_from_u64(self.seed.wrapping_add(k)));
        }
        match self.streams.get_mut(image) {
            Some(rng) => (0..len).map(|_| StandardNormal.sample(rng)).collect(),
            None => vec![0.0; len],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_per_image_and_reproducible() {
        let mut a = SeededNoise::new(7);
        let mut b = SeededNoise::new(7);
        let a1 = a.draw(1, 5);
        let b0 = b.draw(0, 5);
        let b1 = b.draw(1, 5);
        assert_eq!(a1, b1);
        assert_ne!(b0, b1);
        assert_eq!(SeededNoise::new(8).draw(0, 5), a1);
        let v = SeededNoise::new(0).draw(0, 20_000);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.05 && (var - 1.0).abs() < 0.05, "{mean} {var}");
    }
}
