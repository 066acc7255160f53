//! Evaluation metrics.

pub mod correlation;
