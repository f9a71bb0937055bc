//! govbox-engine: loads models and runs them on a [`govbox_drivers::Backend`].
//!
//! It reads HuggingFace folders (safetensors, `config.json`, `tokenizer.json`) and GGUF files,
//! memory-mapping weights rather than copying them. Every header reader caps its sizes and checks
//! every offset against the file, so a malformed or hostile model file gives an [`EngineError`]
//! naming the file and tensor, never a panic. The engine trusts the files it is given to be what
//! the operator chose (signature checks happen before, in the images crate); it does not trust
//! them to be well formed.
#![deny(unsafe_code)]

pub mod chat;
mod error;
pub mod gguf;
#[allow(unsafe_code)]
mod mmap;
pub mod tokenizer;
pub mod tool_stream;
pub mod weights;

pub use error::{EngineError, PromptError, Result};
pub use mmap::{MappedFile, copy_model_files};
pub mod batcher;
pub mod causal;
pub mod config;
pub mod constraint;
mod control;
pub mod embed;
mod embed_config;
mod engine;
pub mod family;
mod generation;
pub mod kv;
pub mod logprobs;
pub mod models;
pub mod reasoning;
pub mod rerank;
pub mod rerank_yesno;
pub mod sampler;
mod scheduler;
pub mod tools;

pub use engine::{Engine, EngineOptions, GenerateRequest, LoadAs, Prompt};
pub use generation::{Event, FinishReason, Generation, Prepared, SeqGuard, StopMatcher, Usage};
pub use kv::{KvStats, PrefixCache};
