//! Readers for pair data: CSV/TSV (with or without a header) and JSONL, one shared reader for
//! `predict`, `eval` and `train`. Every error names the file, and the line where there is one.

pub mod bundled;
mod hub;
mod table;

pub use hub::resolve as resolve_source;

pub use table::{read_text, HeaderMode, Table};

use anyhow::{bail, Result};

/// Which columns hold the two texts and (optionally) the label.
#[derive(Debug, Clone, Default)]
pub struct Columns {
    /// Column names or 0-based indices; `None` picks the first two text columns.
    pub texts: Option<(String, String)>,
    /// Column name or index; `None` picks the first numeric column after the texts.
    pub label: Option<String>,
    /// Class names: labels are read as one of them (or its index) and become that index.
    pub label_names: Option<Vec<String>>,
}

impl Columns {
    /// The columns named (not numbered) in the text and label choices.
    pub fn names(&self) -> Vec<String> {
        let (a, b) = self.texts.clone().unzip();
        [a, b, self.label.clone()]
            .into_iter()
            .flatten()
            .filter(|n| n.parse::<usize>().is_err())
            .collect()
    }

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
        .map(|r| {
            table.check(r)?;
            Ok((table.text(r, a)?, table.text(r, b)?))
        })
        .collect()
}

/// Shard `index` of `count` (`--shard I/N`): a contiguous block of the rows, so that the
/// shards' outputs concatenated in shard order are one run's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let bad = || format!("\"{s}\" is not a shard I/N (0 <= I < N, as 0/3, 1/3, 2/3)");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's rows of `n`: sizes differ by at most one.
    pub fn range(self, n: usize) -> std::ops::Range<usize> {
        self.index * n / self.count..(self.index + 1) * n / self.count
    }
}

/// A labelled pair; `line` points back into the source file for error messages.
#[derive(Debug, Clone)]
pub struct Example {
    pub a: String,
    pub b: String,
    pub label: f64,
    pub line: usize,
}

/// Labelled pairs in file order. A bad row (wrong field count, missing text, a label that is
/// not a number) is an error naming file and line, or with `skip_bad_rows` is skipped and
/// counted (the second value returned).
pub fn read_examples(
    table: &Table,
    cols: &Columns,
    skip_bad_rows: bool,
) -> Result<(Vec<Example>, usize)> {
    let (a, b) = table.text_columns(cols)?;
    let l = table.label_column(cols)?;
    let mut out = Vec::with_capacity(table.rows.len());
    let mut skipped = 0;
    for r in &table.rows {
        let parsed = table.check(r).and_then(|_| {
            Ok(Example {
                a: table.text(r, a)?,
                b: table.text(r, b)?,
                label: match &cols.label_names {
                    Some(names) => table.class(r, l, names)?,
                    None => table.number(r, l)?,
                },
                line: r.line,
            })
        });
        match parsed {
            Ok(e) => out.push(e),
            Err(_) if skip_bad_rows => skipped += 1,
            Err(e) => bail!("{e:#} (pass --skip-bad-rows to skip such rows)"),
        }
    }
    if out.is_empty() {
        bail!("{}: no usable rows ({skipped} skipped)", table.source);
    }
    Ok((out, skipped))
}
