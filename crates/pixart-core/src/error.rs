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
    /// A weight file is unreadable, or does not match the model: every problem is listed.
    #[error("{}: {}", path.display(), problems.join("; "))]
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
    /// An error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
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
