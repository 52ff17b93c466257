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
