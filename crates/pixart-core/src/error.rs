//! The error type shared by the pixart library crates.
use std::path::PathBuf;

/// Everything that can go wrong in the pixart libraries.
///
/// Messages are one line and name the file, tensor or key at fault, so the CLI can print them
/// as they are.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A config file is malformed or holds an impossible value.
    #[error("{}: {msg}", path.display())]
    Config { path: PathBuf, msg: String },
    /// A weight file is unreadable, or does not match the model: the first problems are
    /// listed, then how many more there are.
    #[error("{}: {}", path.display(), summarize(problems))]
    Weights { path: PathBuf, problems: Vec<String> },
    /// Tensors handed to a model have the wrong rank, size or dtype.
    #[error("{0}")]
    Shape(String),
    /// A request or argument that cannot be honoured.
    #[error("{0}")]
    InvalidInput(String),
    /// A generation request whose `field` cannot be honoured. `message` follows the field's
    /// name (`"must be at least 1"`), so that each front-end names the field its own way: the
    /// CLI as its flag (`--steps must be at least 1`), the server as its JSON field.
    #[error("{} {message}", field.name())]
    InvalidRequest { field: Field, message: String },
    /// The Hugging Face hub could not be reached or refused a download (a run-time failure,
    /// unlike a hub id that does not exist, which is [`Error::InvalidInput`]).
    #[error("{0}")]
    Hub(String),
    /// A computation produced NaN or infinite values (from a broken weight or input): a
    /// run-time failure rather than a black image.
    #[error("{0}")]
    NonFinite(String),
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// The fields of a generation request, for [`Error::InvalidRequest`]: what the caller set,
/// named by the library ([`Field::name`]); front-ends map them to their own names in one
/// table each (a CLI flag, a JSON field). Not `non_exhaustive` on purpose: a new field does not
/// compile until every front-end's table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Prompt,
    NegativePrompt,
    /// The image width.
    Width,
    /// The image height.
    Height,
    /// Width and height together (e.g. too small for the model's KV compression).
    Size,
    /// Images per prompt.
    Batch,
    Steps,
    Guidance,
    Seed,
    Sampler,
    /// Image to image: the start picture.
    Image,
    Strength,
    /// Inpainting: the mask picture.
    Mask,
    /// Initial latents.
    Latents,
    Previews,
    /// The KV compression spec (`SAMPLING[:R[:LAYERS]]`).
    KvCompress,
    /// Two-pass upscaling: the factor, the second pass's strength and steps.
    Upscale,
    UpscaleStrength,
    UpscaleSteps,
    /// What the run makes (images or latents).
    Output,
    /// ControlNet: the control picture.
    Control,
    /// ControlNet: the scale of its residuals.
    ControlScale,
}

impl Field {
    /// The library's name for the field (`steps`, `upscale_strength`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Prompt => "prompt",
            Self::NegativePrompt => "negative_prompt",
            Self::Width => "width",
            Self::Height => "height",
            Self::Size => "size",
            Self::Batch => "batch",
            Self::Steps => "steps",
            Self::Guidance => "guidance",
            Self::Seed => "seed",
            Self::Sampler => "sampler",
            Self::Image => "image",
            Self::Strength => "strength",
            Self::Mask => "mask",
            Self::Latents => "latents",
            Self::Previews => "previews",
            Self::KvCompress => "kv_compress",
            Self::Upscale => "upscale",
            Self::UpscaleStrength => "upscale_strength",
            Self::UpscaleSteps => "upscale_steps",
            Self::Output => "output",
            Self::Control => "control_image",
            Self::ControlScale => "controlnet_conditioning_scale",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The problems a message lists before it only counts the rest.
const LISTED_PROBLEMS: usize = 8;

/// `a; b; c` for a few problems; the first [`LISTED_PROBLEMS`] and a count beyond that (a
/// config of thousands of layers against a small file misses thousands of tensors).
fn summarize(problems: &[String]) -> String {
    let shown = problems[..problems.len().min(LISTED_PROBLEMS)].join("; ");
    match problems.len().saturating_sub(LISTED_PROBLEMS) {
        0 => shown,
        more => format!("{shown}; and {more} more"),
    }
}

/// Result with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An [`Error::Io`] for `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// An [`Error::Config`] for `path`.
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An [`Error::InvalidRequest`]: `message` follows the field's name.
    pub fn request(field: Field, message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            field,
            message: message.into(),
        }
    }

    /// An [`Error::Weights`] for `path` with one problem.
    pub fn weights(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Error::Weights {
            path: path.into(),
            problems: vec![problem.into()],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_error_reads_as_its_field_then_the_message() {
        let e = Error::request(Field::UpscaleSteps, "must be at least 1");
        assert_eq!(e.to_string(), "upscale_steps must be at least 1");
        assert!(matches!(
            e,
            Error::InvalidRequest {
                field: Field::UpscaleSteps,
                ..
            }
        ));
    }

    #[test]
    fn weight_problems_are_listed_up_to_a_count() {
        let e = |n: usize| Error::Weights {
            path: "w.safetensors".into(),
            problems: (0..n).map(|i| format!("missing tensor `t{i}`")).collect(),
        };
        assert_eq!(
            e(2).to_string(),
            "w.safetensors: missing tensor `t0`; missing tensor `t1`"
        );
        let long = e(3000).to_string();
        assert!(long.ends_with("missing tensor `t7`; and 2992 more"), "{long}");
        assert!(long.len() < 300, "{long}");
    }
}
