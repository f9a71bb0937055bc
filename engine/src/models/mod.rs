//! Model architectures, written against the [`govbox_drivers::Backend`] ops.

pub mod bert;
pub mod bert_config;
pub mod decoder;
mod mla;
mod moe;
mod names;
