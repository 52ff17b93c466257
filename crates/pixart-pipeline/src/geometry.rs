//! [`ModelGeometry`]: what request validation needs to know about the models, from the loaded
//! components or, before loading, from their config files. Both the components and the
//! request modules use it; it depends on neither.
use pixart_model::TransformerConfig;
use pixart_schedulers::{SamplerKind, SchedulerConfig};

/// What request validation needs to know about the models.
#[derive(Debug, Clone)]
pub struct ModelGeometry {
    /// Transformer `sample_size` (latent side at the native resolution).
    pub sample_size: usize,
    pub patch_size: usize,
    /// Latent channels the transformer takes.
    pub in_channels: usize,
    /// Channels the transformer predicts: `in_channels`, or twice that for a model that also
    /// predicts its variance (learned sigma).
    pub out_channels: usize,
    /// Image pixels per latent pixel.
    pub vae_factor: usize,
    /// The KV compression ratio of the layers that compress (`None` when none does): the
    /// token grid must hold one R×R window.
    pub kv_ratio: Option<usize>,
    /// `scheduler_config.json`: the sampler it names (the default one) and the schedule the
    /// others are built from.
    pub scheduler: SchedulerConfig,
    /// Whether a ControlNet comes with the model (a control image can be used).
    pub controlnet: bool,
}

impl ModelGeometry {
    /// The geometry of a transformer config, a VAE's downsampling factor and a scheduler config.
    pub fn new(t: &TransformerConfig, vae_factor: usize, scheduler: SchedulerConfig) -> Self {
        Self {
            sample_size: t.sample_size,
            patch_size: t.patch_size,
            in_channels: t.in_channels,
            out_channels: t.out_channels(),
            vae_factor,
            kv_ratio: t
                .kv_compress
                .as_ref()
                .filter(|k| k.scale_factor > 1 && !k.layers.is_empty())
                .map(|k| k.scale_factor),
            scheduler,
            controlnet: false,
        }
    }

    /// The sampler `scheduler_config.json` names, if it names one this engine runs.
    pub fn model_sampler(&self) -> Option<SamplerKind> {
        self.scheduler.class().map(SamplerKind::of_class)
    }

    /// Image pixels per token side (`vae_factor · patch_size`): sizes generated without
    /// binning are multiples of it.
    pub fn pixel_multiple(&self) -> usize {
        self.vae_factor * self.patch_size
    }
}

#[cfg(test)]
impl ModelGeometry {
    /// The built-in model's geometry (2×2 patches, VAE factor 4, 4 → 8 channels) with
    /// `sample_size`, for the tests of the modules that use it.
    pub(crate) fn for_tests(sample_size: usize) -> Self {
        Self {
            sample_size,
            patch_size: 2,
            in_channels: 4,
            out_channels: 8,
            vae_factor: 4,
            kv_ratio: None,
            scheduler: SchedulerConfig::pixart_sigma(),
            controlnet: false,
        }
    }
}
