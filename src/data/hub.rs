//! `hf://datasets/OWNER/NAME[/PATH]`: dataset files from the hub, through the HF cache.

use anyhow::{bail, Result};

use crate::hub::RepoKind;

const EXTENSIONS: &[&str] = &["parquet", "csv", "tsv", "jsonl", "json", "ndjson"];

/// Names a split may go by in file and folder names.
fn aliases(split: &str) -> &'static [&'static str] {
    match split {
        "train" => &["train", "training"],
        "validation" | "dev" => &["validation", "dev", "valid", "val"],
        "test" => &["test", "testing"],
        _ => &[],
    }
}

/// Whether `path` holds `split`: a folder named after it, or a file name that starts with it
/// (`train.csv`, `train-00000-of-00001.parquet`).
fn in_split(path: &str, split: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    let mut parts: Vec<&str> = lower.split('/').collect();
    let file = parts.pop().unwrap_or("");
    aliases(split).iter().any(|a| {
        parts.contains(a)
            || file
                .strip_prefix(a)
                .is_some_and(|rest| rest.starts_with(['.', '-', '_']))
    })
}

/// Local paths of the data for `spec` and `split`: the spec itself when it is a local file,
/// else the hub dataset's file (given a PATH) or its files for the split, fetched to the cache.
pub fn resolve(spec: &str, split: &str) -> Result<Vec<String>> {
    let Some(rest) = spec.strip_prefix("hf://datasets/") else {
        return Ok(vec![spec.to_string()]);
    };
    let parts: Vec<&str> = rest.splitn(3, '/').collect();
    if parts.len() < 2 || parts[0].is_empty() || parts[1].is_empty() {
        bail!("{spec}: expected hf://datasets/OWNER/NAME[/PATH]");
    }
    let repo = format!("{}/{}", parts[0], parts[1]);
    let files: Vec<String> = match parts.get(2) {
        Some(path) if !path.is_empty() => vec![path.to_string()],
        _ => {
            let mut files: Vec<String> = crate::hub::list_files(&repo, RepoKind::Dataset)?
                .into_iter()
                .filter(|f| {
                    EXTENSIONS
                        .iter()
                        .any(|e| f.to_ascii_lowercase().ends_with(&format!(".{e}")))
                })
                .filter(|f| in_split(f, split))
                .collect();
            files.sort();
            if files.is_empty() {
                bail!(
                    "{spec} has no {split} split files ({})",
                    EXTENSIONS.join(", ")
                );
            }
            files
        }
    };
    let names: Vec<&str> = files.iter().map(String::as_str).collect();
    Ok(crate::hub::fetch_files(&repo, RepoKind::Dataset, &names)?
        .into_iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::in_split;

    #[test]
    fn split_names_in_paths() {
        assert!(in_split("train.csv", "train"));
        assert!(in_split("data/train-00000-of-00001.parquet", "train"));
        assert!(in_split("validation/part-0.parquet", "validation"));
        assert!(in_split("dev.jsonl", "validation"));
        assert!(!in_split("training_args.json", "validation"));
        assert!(!in_split("trainer.csv", "train"));
        assert!(!in_split("data/test-00000.parquet", "train"));
    }
}
