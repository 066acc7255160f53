//! Downloads through `hf-hub` into the standard HF cache (feature `hub`).

use anyhow::{bail, Context, Result};
use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use super::{is_offline, RepoKind};

/// Files a model folder needs, and the optional ones fetched when the repository has them.
const REQUIRED: &[&str] = &["config.json", "tokenizer.json"];
const OPTIONAL: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "config_sentence_transformers.json",
    "sentence_bert_config.json",
];
const WEIGHTS: &[&str] = &["model.safetensors", "pytorch_model.bin"];

fn repo(id: &str, kind: RepoKind) -> Repo {
    let kind = match kind {
        RepoKind::Model => RepoType::Model,
        RepoKind::Dataset => RepoType::Dataset,
    };
    Repo::new(id.to_string(), kind)
}

/// The cache folder holding model `id`'s files, fetched unless offline.
pub fn model(id: &str) -> Result<PathBuf> {
    let repo = repo(id, RepoKind::Model);
    if is_offline() {
        fetch_cached(&repo)
    } else {
        fetch_online(&repo)
    }
}

/// Fetches files of a hub repository into the cache.
pub fn files(id: &str, kind: RepoKind, files: &[&str]) -> Result<Vec<PathBuf>> {
    let repo = &repo(id, kind);
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
pub fn list(id: &str, kind: RepoKind) -> Result<Vec<String>> {
    let repo = &repo(id, kind);
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
