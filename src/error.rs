//! One error type for the library. Every variant names the file, flag or tensor at fault and the problem.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// The OS error is part of the message, not a `source()`: with both, an error chain printed at the CLI
    /// edge (`{:#}`) said it twice.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },

    /// A data file that cannot be parsed: corrupt, truncated or holding values out of range.
    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },

    /// A value outside 0..K-1 handed to a model with K values.
    #[error("value {value} at position {position} is outside 0..{max} (the model has {k} values)", max = .k - 1)]
    ValueOutOfRange { value: i64, position: usize, k: usize },

    /// A configuration that cannot be built, or that would break causality.
    #[error("invalid config: {0}")]
    Config(String),

    /// A request that cannot be carried out as asked, through no fault of a config: an argument out of range
    /// (`--importance-samples 0`), data or tensors of the wrong shape, labels or a context vector missing or
    /// not expected, an empty data set, a sampler the family lacks, worker threads the system will not start.
    /// The message says what and why.
    #[error("{0}")]
    Invalid(String),

    /// A broken invariant inside the library: a bug, not the user's input.
    #[error("internal error (please report it): {0}")]
    Internal(String),

    /// A checkpoint tensor whose shape does not fit the model.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, the model expects {expected:?}")]
    CheckpointMismatch {
        path: PathBuf,
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor the model needs that the checkpoint does not hold.
    #[error("{path}: tensor `{tensor}` is missing from the checkpoint (it holds {held})")]
    MissingTensor {
        path: PathBuf,
        tensor: String,
        held: String,
    },

    /// A checkpoint stamped as the weights of another model than the one loading it (another run's, copied
    /// in: its shapes may fit, its figures would be wrong).
    #[error(
        "{path}: holds the weights of another model than the config describes (stamped {stamped}, the config's \
         {own}): weights copied in from another run, or another run's --config? Use them with the config of the \
         run they were trained in"
    )]
    ForeignCheckpoint {
        path: PathBuf,
        stamped: String,
        own: String,
    },

    /// A checkpoint file that cannot be read at all.
    #[error("{path}: not a readable safetensors checkpoint: {msg}")]
    Checkpoint { path: PathBuf, msg: String },

    /// A picture or plot that could not be drawn or written.
    #[error("{path}: cannot write picture: {msg}")]
    Plot { path: PathBuf, msg: String },

    /// A model family the codec cannot run in its exact arithmetic.
    #[error("{0} has no exact arithmetic mode yet, so it cannot compress or decompress (use another model family)")]
    NoExactMode(String),

    /// A compressed file that is not a valid `.arm` file: bad magic, truncated, corrupted.
    #[error("corrupt compressed file: {0}")]
    CodecCorrupt(String),

    /// A compressed file written by another version of the container.
    #[error(
        "compressed file version {found} is not supported (this build reads version {supported}; a file of an \
         older version decompresses with the armory that wrote it)"
    )]
    CodecVersion { found: u8, supported: u8 },

    /// A compressed file whose probabilities were computed in an arithmetic this build does not have.
    #[error("compressed file arithmetic mode {found} is not supported (this build has mode {supported})")]
    CodecArithmetic { found: u8, supported: u8 },

    /// A compressed file written with another model (or other weights).
    #[error(
        "the file was compressed with another model (fingerprint {expected:016x}, this model's is {found:016x}); \
         decompress with the run it was compressed with"
    )]
    CodecModelMismatch { expected: u64, found: u64 },

    /// Decoding finished but the data fail the checksum the encoder stored: a corrupted stream.
    #[error("corrupt compressed file: the decoded data fail their checksum (stored {stored:08x}, got {found:08x})")]
    CodecChecksum { stored: u32, found: u32 },

    /// Training produced a NaN or infinite loss. `kept` says what the run directory holds and what to run next.
    #[error("loss became non-finite ({loss}) at epoch {epoch}, step {step}; {kept}")]
    NonFiniteLoss {
        loss: f32,
        epoch: usize,
        step: usize,
        kept: String,
    },

    /// A checkpoint holding NaN or infinite weights: it would evaluate to NaN and sample garbage.
    #[error(
        "{path}: tensor `{tensor}` holds a non-finite value ({value}) at index {index}; refusing a damaged checkpoint"
    )]
    NonFiniteWeight {
        path: PathBuf,
        tensor: String,
        index: usize,
        value: f64,
    },

    /// Finite weights whose arithmetic overflows (values far beyond what training gives, e.g. ±1e38): a score
    /// or a draw computed from them would be NaN or garbage, so it is refused.
    #[error(
        "{what} is not finite ({value}): the weights overflow f32 arithmetic (values far beyond what training \
         gives); check the weights file"
    )]
    NonFiniteOutput { what: String, value: f64 },

    /// A size decided by a config, a flag or a file that exceeds what armory allows (checked before allocating).
    #[error("{what} = {value} exceeds the limit of {limit}")]
    TooLarge { what: String, value: u128, limit: u128 },

    /// Another process holds the run directory's lock: one writer per run.
    #[error(
        "{path} is in use by another armory process ({holder}): one writer per run; wait for it to finish or stop it"
    )]
    RunLocked { path: PathBuf, holder: String },

    /// A run name that is not a single path component.
    #[error(
        "run name {name:?} {why}: a run name is one path component (no `/` or `\\`, not empty, `.` or `..`), \
         printable, without spaces at its ends"
    )]
    RunName { name: String, why: &'static str },

    /// An output file that exists and may not be replaced.
    #[error("{path} already exists; not overwritten (pass --force to replace it)")]
    OutputExists { path: PathBuf },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            err: source,
        }
    }
    /// A problem found in a data set (too few examples to split, a validation set too large, …) is about
    /// that data, not the config: it names the data set (`spec`) instead of saying "invalid config".
    pub fn about_data(self, spec: &str) -> Self {
        match self {
            Error::Config(msg) | Error::Invalid(msg) => Error::data(spec, msg),
            e => e,
        }
    }
    /// A config check that failed, said of the file the config came from.
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            Error::Config(msg) => Error::Config(format!("{}: {msg}", path.display())),
            Error::TooLarge { what, value, limit } => Error::TooLarge {
                what: format!("{}: {what}", path.display()),
                value,
                limit,
            },
            e => e,
        }
    }
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
