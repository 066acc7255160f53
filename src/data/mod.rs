//! Readers for pair data: CSV/TSV (with or without a header) and JSONL, one shared reader for
//! `predict`, `eval` and `train`. Every error names the file, and the line where there is one.

mod table;

pub use table::{HeaderMode, Table};

use anyhow::{bail, Result};

/// Which columns hold the two texts and (optionally) the label.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// Column names or 0-based indices; `None` picks the first two text columns.
    pub texts: Option<(String, String)>,
    /// Column name or index; `None` picks the first numeric column after the texts.
    pub label: Option<String>,
}

impl Columns {
    /// Parses `--text-cols A,B`.
    pub fn parse_text_cols(spec: &str) -> Result<(String, String)> {
        match spec.split(',').map(str::trim).collect::<Vec<_>>().as_slice() {
            [a, b] if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => bail!("--text-cols takes two column names or indices separated by a comma, got \"{spec}\""),
        }
    }
}

/// Text pairs in file order.
pub fn read_pairs(table: &Table, cols: &Columns) -> Result<Vec<(String, String)>> {
    let (a, b) = table.text_columns(cols)?;
    table
        .rows
        .iter()
        .map(|r| Ok((table.text(r, a)?, table.text(r, b)?)))
        .collect()
}
