//! Models and datasets from the Hugging Face hub, through the standard HF cache (cargo feature
//! `hub`, on by default).
//!
//! `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE=1` are honoured: offline, files come from the
//! cache only, and a cold cache is an error that says so. Names the server sends are checked
//! before they become cache paths (see `download.rs`).
//! Without the feature, local folders and files work as ever and a hub id is an error that
//! says how to get downloads.

use anyhow::{bail, Result};
use std::path::{Path, PathBuf};

#[cfg(feature = "hub")]
mod download;

/// Without the `hub` feature every download is an error that says so.
#[cfg(not(feature = "hub"))]
mod download {
    use super::RepoKind;
    use anyhow::{bail, Result};
    use std::path::PathBuf;

    fn unavailable<T>(id: &str) -> Result<T> {
        bail!("{id} is not a local path, and this crossenc was built without hub downloads (cargo feature `hub`)")
    }
    pub fn model(id: &str) -> Result<PathBuf> {
        unavailable(id)
    }
    pub fn files(id: &str, _kind: RepoKind, _files: &[&str]) -> Result<Vec<PathBuf>> {
        unavailable(id)
    }
    pub fn list(id: &str, _kind: RepoKind) -> Result<Vec<String>> {
        unavailable(id)
    }
}

/// What a hub repository holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository.
    Model,
    /// A dataset repository (`hf://datasets/...`).
    Dataset,
}

/// Whether `HF_HUB_OFFLINE` forbids the network: only the cache is read.
pub fn is_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

/// A model named by a path where there is no folder (front ends raise their own "not found"
/// for it: Python's `FileNotFoundError`).
#[derive(Debug, thiserror::Error)]
#[error("model folder {0} does not exist")]
pub struct NoSuchFolder(pub String);

/// A local folder as is, or a hub id (`owner/name`) fetched into the HF cache; returns the
/// folder that holds the model files.
pub fn resolve_model(id_or_path: &str) -> Result<PathBuf> {
    let path = Path::new(id_or_path);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("{id_or_path} is a file; a model is a folder (config.json, tokenizer.json, weights) or a hub id");
    }
    let looks_like_path = id_or_path.is_empty()
        || id_or_path.starts_with(['/', '.', '~'])
        || id_or_path.split('/').count() > 2
        || id_or_path.contains('\\');
    if looks_like_path {
        return Err(NoSuchFolder(id_or_path.to_string()).into());
    }
    download::model(id_or_path)
}

/// Fetches `files` of hub repository `id` into the cache; their local paths.
pub fn fetch_files(id: &str, kind: RepoKind, files: &[&str]) -> Result<Vec<PathBuf>> {
    download::files(id, kind, files)
}

/// The files of hub repository `id`.
pub fn list_files(id: &str, kind: RepoKind) -> Result<Vec<String>> {
    download::list(id, kind)
}
