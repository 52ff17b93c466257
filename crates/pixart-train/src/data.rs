//! What the trainer reads: batches of precomputed VAE posteriors and T5 features.
use candle_core::Tensor;
use pixart_core::Result;
use rand::rngs::StdRng;

/// One training batch, all samples of one bucket (one latent size).
#[derive(Debug, Clone)]
pub struct Batch {
    /// (b, c, h, w) posterior mean of the VAE (not yet scaled by the scaling factor).
    pub latent_mean: Tensor,
    /// (b, c, h, w) posterior standard deviation.
    pub latent_std: Tensor,
    /// (b, l, d) T5 features of each sample's caption.
    pub caption: Tensor,
    /// (b, l) 1 = token, 0 = padding.
    pub mask: Tensor,
}

/// A source of training batches. Everything random comes from `rng`, so a run that draws
/// with the same generator states sees the same batches (resume = uninterrupted run).
pub trait TrainData {
    /// One batch of `batch` samples from one bucket; each sample takes its long caption with
    /// probability `long_caption_ratio`.
    fn sample_batch(&self, rng: &mut StdRng, batch: usize, long_caption_ratio: f64) -> Result<Batch>;
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The VAE scaling factor the latents were made for, when the data records it.
    fn scaling_factor(&self) -> Option<f64> {
        None
    }
}
