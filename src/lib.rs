//! crossenc: fine-tune, evaluate and serve cross-encoders (BERT-family pair scorers) on CPU.
//!
//! The encoders run on crossenc's own engine (`model`: explicit forward and backward per module
//! over the kernels of `ops`), so the same code predicts and trains; weights, configs and
//! tokenizers are HuggingFace's formats both ways.
//!
//! Cargo features, all on by default: `cli` (the binary's flags and progress bars, and with it
//! `serve` and `parquet`), `serve` (the HTTP server: axum, tokio), `parquet` (Parquet data
//! files), `hub` (hub ids through hf-hub). A program that only scores or trains local model
//! folders depends on crossenc with `default-features = false`.

#![deny(missing_docs)]

/// The harness of `crossenc bench` (and of the tests that time or resize a model): not a
/// stable API.
#[doc(hidden)]
pub mod bench;
pub mod data;
pub mod engine;
pub mod eval;
mod fault;
pub mod hub;
// The encoders (reached through `CrossEncoder`) and the kernels: public for the tests and the
// harness, not a stable API.
#[doc(hidden)]
pub mod model;
#[doc(hidden)]
pub mod ops;
pub mod progress;
pub mod search;
#[cfg(feature = "serve")]
pub mod serve;
pub mod setting;
pub mod stream;
pub mod train;

pub use model::cross_encoder::{
    Activation, CrossEncoder, LoadOptions, Output, Quantization, Scores,
};
pub use ops::Precision;

/// The README's code blocks, compiled as doctests so that its example stays true.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
