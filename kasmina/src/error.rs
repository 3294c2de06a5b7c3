//! The facade's error: what went wrong, in words that say what to do.

/// Result with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the facade and the `kasmina` command report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An error from the core or a backend.
    #[error(transparent)]
    Core(#[from] kasmina_core::Error),
    /// A device name that does not parse (`cpu`, `wgpu:0`, `cuda:0`).
    #[error("invalid device name '{name}': {message}")]
    DeviceName {
        /// The name given.
        name: String,
        /// What was wrong.
        message: String,
    },
    /// A backend that this build does not contain.
    #[error("the {backend} backend is not compiled into this build; rebuild with `--features {feature}`")]
    NotCompiled {
        /// `cpu`, `wgpu`, `cuda`.
        backend: &'static str,
        /// The cargo feature that turns it on.
        feature: &'static str,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not what the command needs (a malformed NPY, a wrong width...).
    #[error("{path}: {message}")]
    BadInput {
        /// The file.
        path: String,
        /// What was wrong.
        message: String,
    },
    /// Anything else a command refuses, with the reason.
    #[error("{0}")]
    Invalid(String),
}

impl From<kasmina_core::BackendError> for Error {
    fn from(e: kasmina_core::BackendError) -> Self {
        Error::Core(e.into())
    }
}

impl From<kasmina_core::ConfigError> for Error {
    fn from(e: kasmina_core::ConfigError) -> Self {
        Error::Core(e.into())
    }
}

impl From<kasmina_core::SnapshotError> for Error {
    fn from(e: kasmina_core::SnapshotError) -> Self {
        Error::Core(e.into())
    }
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }

    /// A bad input file.
    pub fn bad_input(path: impl AsRef<std::path::Path>, message: impl Into<String>) -> Self {
        Error::BadInput { path: path.as_ref().display().to_string(), message: message.into() }
    }
}
