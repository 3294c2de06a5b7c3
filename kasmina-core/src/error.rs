//! Errors: one enum for the crate ([`Error`]), with typed parts a caller can match on.

use crate::lifecycle::LifecycleState;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every error the core (and, through [`BackendError`], any backend) returns.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The layer configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A lifecycle transition was refused; nothing changed.
    #[error(transparent)]
    Transition(#[from] TransitionError),
    /// A snapshot could not be written or read.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A device reported an error, or the backend cannot run here.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A raw value is not one of an enum's values.
    #[error("{value} is not a valid {kind} (valid values: {valid})")]
    InvalidEnum {
        /// The enum's name.
        kind: &'static str,
        /// The raw value that was given.
        value: u64,
        /// The valid range, for the message.
        valid: &'static str,
    },
    /// A seed id is not below the number of seeds.
    #[error("seed id {seed_id} is out of range: the layer has {num_seeds} seeds (ids 0..{num_seeds})")]
    SeedOutOfRange {
        /// The id that was given.
        seed_id: usize,
        /// The layer's number of seeds.
        num_seeds: usize,
    },
    /// A tensor or array has the wrong length or shape.
    #[error("shape mismatch for {what}: expected {expected}, got {got}")]
    Shape {
        /// What was being checked.
        what: String,
        /// The expected shape or length.
        expected: String,
        /// The shape or length that was given.
        got: String,
    },
    /// A tensor has the wrong dtype.
    #[error("dtype mismatch for {what}: expected {expected}, got {got}")]
    DType {
        /// What was being checked.
        what: String,
        /// The expected dtype.
        expected: crate::DType,
        /// The dtype that was given.
        got: crate::DType,
    },
    /// A value is outside its allowed range (a NaN alpha, a negative scale count...).
    #[error("invalid value for {what}: {message}")]
    InvalidValue {
        /// What was being checked.
        what: String,
        /// What was wrong.
        message: String,
    },
    /// What a device holds for its kernels (raw records, weights, derived constants) is not
    /// what the host uploaded; the device's copy must not be used.
    #[error(
        "device integrity check failed on {backend}: {what}: the device's kernel checksum is {device:08x}, \
         the host's {host:08x}"
    )]
    DeviceIntegrity {
        /// The backend (`cpu`, `wgpu`, `cuda`).
        backend: &'static str,
        /// Which seeds, after which operation.
        what: String,
        /// The checksum read back from the device.
        device: u32,
        /// The checksum of the host's state.
        host: u32,
    },
    /// Host memory for a size that came from input could not be allocated (or the size does
    /// not fit the address space); nothing was changed.
    #[error("not enough memory: {what} needs {bytes} bytes")]
    OutOfMemory {
        /// What needed the memory.
        what: String,
        /// How many bytes it needed.
        bytes: u128,
    },
}

/// A vector of `n` copies of `value`, allocated fallibly: a size too large for the address
/// space or for the memory available is an [`Error::OutOfMemory`] naming `what`, never an abort.
pub fn try_filled<T: Clone>(n: usize, value: T, what: &str) -> Result<Vec<T>> {
    let oom = || Error::OutOfMemory { what: what.to_string(), bytes: n as u128 * std::mem::size_of::<T>() as u128 };
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| oom())?;
    v.resize(n, value);
    Ok(v)
}

/// A configuration error (SPEC 1): the message says what to change.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `hidden_dim` is zero.
    #[error("hidden_dim must be greater than 0")]
    ZeroHiddenDim,
    /// `num_seeds` is zero.
    #[error("num_seeds must be greater than 0")]
    ZeroSeeds,
    /// `hidden_dim` is not a multiple of `num_seeds`.
    #[error("hidden_dim ({hidden_dim}) must be a multiple of num_seeds ({num_seeds}); the remainder is {}", hidden_dim % num_seeds)]
    NotDivisible {
        /// H.
        hidden_dim: usize,
        /// S.
        num_seeds: usize,
    },
    /// A size does not fit the schema's integer width.
    #[error("{what} = {value} is too large (at most {max})")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The largest allowed.
        max: usize,
    },
    /// A float parameter is out of its range.
    #[error("{what} must be {requirement}, got {value}")]
    OutOfRange {
        /// Which parameter.
        what: &'static str,
        /// What it must be.
        requirement: &'static str,
        /// The given value.
        value: f64,
    },
}

/// A refused lifecycle transition (SPEC 3). The layer is unchanged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The (from, to) pair is not in the transition table.
    #[error("seed {seed_id}: {from} -> {to} is not a legal transition")]
    Illegal {
        /// The seed.
        seed_id: usize,
        /// Its current state.
        from: LifecycleState,
        /// The requested state.
        to: LifecycleState,
    },
    /// CULLED / ROLLED_BACK -> DORMANT before the embargo has passed.
    #[error(
        "seed {seed_id}: {from} -> DORMANT is embargoed for {remaining} more epoch(s) ({epochs_in_state} of {embargo_epochs} served)"
    )]
    Embargoed {
        /// The seed.
        seed_id: usize,
        /// CULLED or ROLLED_BACK.
        from: LifecycleState,
        /// Epochs served in the state.
        epochs_in_state: u16,
        /// The embargo length.
        embargo_epochs: u16,
        /// Epochs still to serve.
        remaining: u16,
    },
    /// DORMANT -> GERMINATED needs a blueprint: use `request_germination`.
    #[error(
        "seed {seed_id}: DORMANT -> GERMINATED needs a blueprint; call request_germination(seed_id, blueprint_id, type, strategy)"
    )]
    NeedsGermination {
        /// The seed.
        seed_id: usize,
    },
}

/// A snapshot that could not be written or loaded (SPEC 2.2).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Reading or writing the file failed.
    #[error("snapshot I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, corrupt header...).
    #[error("snapshot is not a valid safetensors file: {0}")]
    Format(String),
    /// A metadata key is missing or malformed.
    #[error("snapshot metadata: {0}")]
    Metadata(String),
    /// A tensor is missing or has the wrong dtype or shape.
    #[error("snapshot tensor '{name}': {message}")]
    Tensor {
        /// The tensor's name.
        name: String,
        /// What was wrong.
        message: String,
    },
    /// The snapshot was written by a newer version of Kasmina.
    #[error(
        "snapshot schema version {found} is newer than this build supports ({supported}); upgrade kasmina to read it"
    )]
    NewerSchema {
        /// The version in the file.
        found: u64,
        /// The newest version this build reads.
        supported: u8,
    },
    /// No migration path exists from the file's schema version.
    #[error("snapshot schema version {found} cannot be migrated (oldest supported: {oldest})")]
    UnsupportedSchema {
        /// The version in the file.
        found: u64,
        /// The oldest version this build reads.
        oldest: u8,
    },
    /// The recorded CRC-32 does not match the state's canonical bytes.
    #[error(
        "snapshot checksum mismatch: the file records {recorded:08x}, its contents hash to {computed:08x} (the file is corrupt)"
    )]
    Checksum {
        /// The value in the metadata.
        recorded: u32,
        /// The value computed from the tensors.
        computed: u32,
    },
    /// The state read from the file is invalid (an unknown enum value, an alpha outside [0, 1]...).
    #[error("snapshot holds an invalid state: {0}")]
    InvalidState(String),
}

/// What kind of failure a backend reports, so callers can react without parsing messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackendErrorKind {
    /// The backend cannot run on this machine (no driver, no adapter, not compiled in).
    Unavailable,
    /// The device is out of memory.
    OutOfMemory,
    /// The device was lost.
    DeviceLost,
    /// A kernel or shader failed to compile or validate.
    Compile,
    /// The device cannot do what was asked (a dtype, a size).
    Unsupported,
    /// Any other device error.
    Device,
}

/// An error from a device or backend, with the device's own message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{backend} backend: {kind:?}: {message}")]
pub struct BackendError {
    /// `cpu`, `wgpu`, `cuda`...
    pub backend: &'static str,
    /// The kind of failure.
    pub kind: BackendErrorKind,
    /// The message, including the device's own words.
    pub message: String,
}

impl BackendError {
    /// Builds an error.
    pub fn new(backend: &'static str, kind: BackendErrorKind, message: impl Into<String>) -> Self {
        Self { backend, kind, message: message.into() }
    }
}

impl Error {
    /// A shape error, with the pieces formatted.
    pub fn shape(what: impl Into<String>, expected: impl std::fmt::Display, got: impl std::fmt::Display) -> Self {
        Error::Shape { what: what.into(), expected: expected.to_string(), got: got.to_string() }
    }
}
