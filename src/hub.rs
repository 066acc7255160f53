//! Models and datasets from the Hugging Face hub, through the standard HF cache (`hf-hub`).
//!
//! `HF_HOME` and `HF_ENDPOINT` are honoured by hf-hub itself; `HF_HUB_OFFLINE=1` is honoured
//! here: files then come from the cache only, and a cold cache is an error that says so.

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

/// Files a model folder needs, and the optional ones fetched when the repository has them.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];
const WEIGHTS: &[&str] = &["model.safetensors", "pytorch_model.bin"];

pub fn is_offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
}

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
        bail!("model folder {id_or_path} does not exist");
    }
    let repo = Repo::new(id_or_path.to_string(), RepoType::Model);
    if is_offline() {
        fetch_cached(&repo)
    } else {
        fetch_online(&repo)
    }
}

/// Fetches files of a hub repository of any type (models, datasets) into the cache.
pub fn fetch_files(repo: &Repo, files: &[&str]) -> Result<Vec<PathBuf>> {
    let cache = Cache::from_env();
    files
        .iter()
        .map(|f| {
            if is_offline() {
                cache
                    .repo(repo.clone())
                    .get(f)
                    .with_context(|| offline_miss(repo, f, &cache))
            } else {
                api_repo(repo)?
                    .get(f)
                    .with_context(|| format!("cannot fetch {f} of {}", repo.url()))
            }
        })
        .collect()
}

fn api_repo(repo: &Repo) -> Result<hf_hub::api::sync::ApiRepo> {
    let api = ApiBuilder::from_env()
        .with_progress(std::io::stderr().is_terminal())
        .build()
        .context("cannot set up the Hugging Face hub client")?;
    Ok(api.repo(repo.clone()))
}

fn offline_miss(repo: &Repo, file: &str, cache: &Cache) -> String {
    format!(
        "{file} of {} is not in the HF cache ({}) and HF_HUB_OFFLINE is set: \
         run once with network access, or unset HF_HUB_OFFLINE",
        repo.url(),
        cache.path().display()
    )
}

fn fetch_cached(repo: &Repo) -> Result<PathBuf> {
    let cache = Cache::from_env();
    let cached = cache.repo(repo.clone());
    let mut dir = None;
    for f in REQUIRED {
        let p = cached
            .get(f)
            .with_context(|| offline_miss(repo, f, &cache))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    if !WEIGHTS.iter().any(|w| cached.get(w).is_some()) {
        bail!(offline_miss(repo, WEIGHTS[0], &cache));
    }
    Ok(dir.expect("REQUIRED is not empty"))
}

fn fetch_online(repo: &Repo) -> Result<PathBuf> {
    let api = api_repo(repo)?;
    let mut dir = None;
    for f in REQUIRED {
        let p = api.get(f).map_err(|e| fetch_error(repo, f, e))?;
        dir = p.parent().map(Path::to_path_buf);
    }
    for f in OPTIONAL {
        match api.get(f) {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(fetch_error(repo, f, e)),
        }
    }
    let mut found = false;
    for f in WEIGHTS {
        match api.get(f) {
            Ok(_) => {
                found = true;
                break;
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(fetch_error(repo, f, e)),
        }
    }
    if !found {
        bail!(
            "{} has neither model.safetensors nor pytorch_model.bin",
            repo.url()
        );
    }
    Ok(dir.expect("REQUIRED is not empty"))
}

fn is_not_found(e: &ApiError) -> bool {
    matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)))
}

fn fetch_error(repo: &Repo, file: &str, e: ApiError) -> anyhow::Error {
    let hint = if is_not_found(&e) {
        "the repository or file does not exist (check the model id)".to_string()
    } else {
        format!("{e} (no network? set HF_HUB_OFFLINE=1 to use the cache only)")
    };
    anyhow::anyhow!("cannot fetch {file} of {}: {hint}", repo.url())
}

/// The files of a hub repository (its `siblings`), listed through the hub API.
pub fn list_files(repo: &Repo) -> Result<Vec<String>> {
    if is_offline() {
        bail!(
            "cannot list the files of {} with HF_HUB_OFFLINE set: name the file, as in hf://datasets/OWNER/NAME/PATH",
            repo.url()
        );
    }
    let info = api_repo(repo)?
        .info()
        .map_err(|e| fetch_error(repo, "the file list", e))?;
    Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
}
