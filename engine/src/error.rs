//! Errors of the engine.

use std::path::PathBuf;

use govbox_drivers::DriverError;

/// Why loading a model or running a request failed.
///
/// Messages name the file and, where there is one, the tensor: an operator reading
/// `model.safetensors: tensor 'model.norm.weight': shape [63] but the config needs [64]` knows
/// what is wrong without a debugger.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// Reading a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A model file is malformed.
    #[error("{file}: {detail}")]
    Format {
        /// The file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// One tensor of a model file is malformed or does not fit the model.
    #[error("{file}: tensor '{tensor}': {detail}")]
    Tensor {
        /// The file.
        file: String,
        /// The tensor's name.
        tensor: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor that the architecture needs is not in the model files.
    #[error("{file}: missing tensor '{tensor}'")]
    MissingTensor {
        /// The file (or index) searched.
        file: String,
        /// The tensor's name.
        tensor: String,
    },
    /// The model's architecture is not one govbox implements.
    #[error(
        "unknown architecture '{0}' (supported: LlamaForCausalLM, Qwen2ForCausalLM, BertModel; GGUF: llama, qwen2)"
    )]
    UnknownArchitecture(String),
    /// The model configuration is invalid.
    #[error("{file}: {detail}")]
    Config {
        /// The configuration file.
        file: String,
        /// What is wrong.
        detail: String,
    },
    /// Building or running the tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Rendering the chat template failed.
    #[error("chat template: {0}")]
    Template(String),
    /// A request cannot be served as asked.
    #[error("request: {0}")]
    Request(String),
    /// An embedding or reranking input does not fit the model (too long, an unknown token id, a
    /// width the model was not trained for): the caller's to fix.
    #[error("{0}")]
    Input(#[from] crate::embed::EmbedInputError),
    /// The backend failed.
    #[error("backend: {0}")]
    Driver(#[from] DriverError),
    /// A grammar for constrained decoding could not be compiled or followed.
    #[error(transparent)]
    Constraint(#[from] crate::constraint::ConstraintError),
    /// The prompt cannot be generated from (empty, longer than the context, an unknown id).
    #[error("invalid prompt: {0}")]
    InvalidPrompt(#[from] PromptError),
    /// The prompt needs more KV-cache blocks than the whole pool has, so it can never run.
    #[error(
        "KV cache is full: the prompt needs {need} tokens of KV but the whole pool holds {available} \
         (raise kv_tokens)"
    )]
    KvCacheFull {
        /// Tokens of KV the prompt needs.
        need: usize,
        /// Tokens the whole pool holds.
        available: usize,
    },
    /// The decoder's scheduler thread is gone (it could not start, or it stopped): nothing can
    /// be generated until the model is loaded again.
    #[error("the engine's scheduler has stopped")]
    SchedulerStopped,
    /// The request's deadline passed before its answer was complete; it was cancelled and its KV
    /// blocks freed.
    #[error("the request's deadline passed before its answer was complete ({completion_tokens} tokens generated)")]
    DeadlineExceeded {
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Tokens generated before the deadline.
        completion_tokens: usize,
    },
}

impl EngineError {
    /// A stable short code for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::Io { .. } => "io",
            EngineError::Format { .. } => "bad_format",
            EngineError::Tensor { .. } => "bad_tensor",
            EngineError::MissingTensor { .. } => "missing_tensor",
            EngineError::UnknownArchitecture(_) => "unknown_architecture",
            EngineError::Config { .. } => "bad_config",
            EngineError::Tokenizer(_) => "tokenizer",
            EngineError::Template(_) => "chat_template",
            EngineError::Request(_) => "bad_request",
            EngineError::Input(_) => "invalid_input",
            EngineError::Driver(_) => "backend",
            EngineError::Constraint(_) => "grammar",
            EngineError::InvalidPrompt(_) => "invalid_prompt",
            EngineError::KvCacheFull { .. } => "kv_cache_full",
            EngineError::SchedulerStopped => "scheduler_stopped",
            EngineError::DeadlineExceeded { .. } => "deadline_exceeded",
        }
    }
}

/// Why a prompt cannot be generated from. Each message names the numbers at fault, never the
/// prompt's text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PromptError {
    /// No tokens at all.
    #[error("the prompt is empty")]
    Empty,
    /// As long as the model's context or longer: no room for one generated token.
    #[error("the prompt has {tokens} tokens; the model's context is {context}")]
    TooLong {
        /// The prompt's tokens.
        tokens: usize,
        /// The model's context.
        context: usize,
    },
    /// A token id the model's vocabulary does not have.
    #[error("prompt token id {id} is outside the model's vocabulary of {vocab}")]
    UnknownToken {
        /// The id.
        id: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
}

/// Result alias for the engine.
pub type Result<T> = std::result::Result<T, EngineError>;
