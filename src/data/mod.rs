//! Readers for pair data: CSV/TSV (with or without a header) and JSONL, one shared reader for
//! `predict`, `eval` and `train`. Every error names the file, and the line where there is one.

pub mod bundled;
mod hub;
mod table;

pub use hub::resolve as resolve_source;

pub use table::{read_lines, read_text, HeaderMode, Row, Rows, Table};

use crate::setting::Setting;
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
        match spec
            .split(',')
            .map(str::trim)
            .collect::<Vec<_>>()
            .as_slice()
        {
            [a, b] if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
            _ => bail!(
                "{} takes two column names or indices separated by a comma, got \"{spec}\"",
                Setting::TextColumns
            ),
        }
    }
}

/// How labelled pairs are read from a file or hub dataset: the columns, the header, what a bad
/// row does and how labels map.
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    /// Which fields are the two texts and the label (and the class names).
    pub columns: Columns,
    /// Whether the first CSV/TSV row is a header.
    pub header: HeaderMode,
    /// Skip rows with a bad label or a wrong number of fields (and count them) instead of
    /// failing.
    pub skip_bad_rows: bool,
    /// Labels are mapped linearly from this range into [0, 1] (STS-B: 0-5).
    pub label_range: Option<(f64, f64)>,
}

impl ReadOptions {
    /// STS-B's CSV layout (no header, 0-5 scores) mapped into [0, 1].
    pub fn stsb() -> Self {
        ReadOptions {
            header: HeaderMode::No,
            label_range: Some((0.0, 5.0)),
            ..Default::default()
        }
    }

    /// Labelled pairs of one split of `spec` (a file, `hf://datasets/...` or `bundled:...`) as
    /// they are read; the table's note on its header, if any, is in `head().note`.
    pub fn examples(&self, spec: &str, split: &str) -> Result<Examples> {
        let rows = Rows::open_source(spec, split, self.header, &self.columns.names())?;
        Examples::new(rows, &self.columns, self.skip_bad_rows, self.label_range)
    }

    /// All the labelled pairs of one split of `spec`, with notes for the reader: the header
    /// guessed, the bad rows skipped. An error if no row was usable.
    pub fn read(&self, spec: &str, split: &str) -> Result<(Vec<Example>, Vec<String>)> {
        let mut examples = self.examples(spec, split)?;
        let out = examples.by_ref().collect::<Result<Vec<_>>>()?;
        let notes = examples.notes(spec, out.len())?;
        Ok((out, notes))
    }
}

/// Where a row's texts (and label) are: the columns found once, from a table's columns and
/// first row, for every row after.
#[derive(Debug, Clone)]
pub struct Picker {
    a: usize,
    b: usize,
    label: Option<usize>,
    label_names: Option<Vec<String>>,
}

impl Picker {
    /// The text columns of `head`, and its label column where `labelled`.
    pub fn new(head: &Table, cols: &Columns, labelled: bool) -> Result<Picker> {
        let (a, b) = head.text_columns(cols)?;
        let label = labelled.then(|| head.label_column(cols)).transpose()?;
        Ok(Picker {
            a,
            b,
            label,
            label_names: cols.label_names.clone(),
        })
    }

    /// The row's two texts.
    pub fn pair(&self, head: &Table, row: &Row) -> Result<(String, String)> {
        head.check(row)?;
        Ok((head.text(row, self.a)?, head.text(row, self.b)?))
    }

    /// The row's texts and label (a picker made `labelled`).
    pub fn example(&self, head: &Table, row: &Row) -> Result<Example> {
        let (a, b) = self.pair(head, row)?;
        let l = self.label.expect("a labelled picker");
        let label = match &self.label_names {
            Some(names) => head.class(row, l, names)?,
            None => head.number(row, l)?,
        };
        Ok(Example {
            a,
            b,
            label,
            line: row.line,
        })
    }
}

/// Text pairs in file order.
pub fn read_pairs(table: &Table, cols: &Columns) -> Result<Vec<(String, String)>> {
    let picker = Picker::new(table, cols, false)?;
    table.rows.iter().map(|r| picker.pair(table, r)).collect()
}

/// Labelled pairs in file order, and the bad rows skipped (see [`Examples`]).
pub fn read_examples(
    table: &Table,
    cols: &Columns,
    skip_bad_rows: bool,
) -> Result<(Vec<Example>, usize)> {
    let mut examples = Examples::new(Rows::of(table.clone()), cols, skip_bad_rows, None)?;
    let out = examples.by_ref().collect::<Result<Vec<_>>>()?;
    examples.notes(&table.source, out.len())?;
    Ok((out, examples.skipped))
}

/// Shard `index` of `count` (`--shard I/N`): a contiguous block of the rows, so that the
/// shards' outputs concatenated in shard order are one run's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard, from 0.
    pub index: usize,
    /// Shards in all (at least 1).
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
    /// The first text.
    pub a: String,
    /// The second text.
    pub b: String,
    /// The label: a score, a 0/1 label or a class index.
    pub label: f64,
    /// Where the pair was read (1-based line; a list's position for pairs in memory).
    pub line: usize,
}

/// Each example's line and label, for the checks that name a bad label's line.
pub fn labelled(examples: &[Example]) -> impl Iterator<Item = (usize, f64)> + Clone + '_ {
    examples.iter().map(|e| (e.line, e.label))
}

/// Labelled pairs as they are read, labels mapped from `label_range` into [0, 1] where given.
/// A bad row (wrong field count, missing text, a label that is not a number or outside the
/// range) is an error naming file and line, or with `skip_bad_rows` is skipped and counted.
pub struct Examples {
    rows: Rows,
    picker: Picker,
    skip_bad_rows: bool,
    label_range: Option<(f64, f64)>,
    /// Bad rows skipped so far.
    pub skipped: usize,
}

impl Examples {
    /// The labelled pairs of `rows`, read as `cols` say; bad rows are skipped (and counted) with
    /// `skip_bad_rows`, else an error naming the line; labels mapped from `label_range` into [0,
    /// 1].
    pub fn new(
        rows: Rows,
        cols: &Columns,
        skip_bad_rows: bool,
        label_range: Option<(f64, f64)>,
    ) -> Result<Examples> {
        Ok(Examples {
            picker: Picker::new(&rows.head, cols, true)?,
            rows,
            skip_bad_rows,
            label_range,
            skipped: 0,
        })
    }

    /// The file's columns and first row.
    pub fn head(&self) -> &Table {
        &self.rows.head
    }

    fn example(&self, row: &Row) -> Result<Example> {
        let mut e = self.picker.example(&self.rows.head, row)?;
        if let Some((lo, hi)) = self.label_range {
            if !(lo..=hi).contains(&e.label) {
                bail!(
                    "{} line {}: label {} is outside {} {lo}:{hi}",
                    self.rows.head.source,
                    e.line,
                    e.label,
                    Setting::LabelRange
                );
            }
            e.label = (e.label - lo) / (hi - lo);
        }
        Ok(e)
    }

    /// Bytes of the input read so far.
    pub fn bytes_read(&self) -> u64 {
        self.rows.bytes_read()
    }

    /// After reading `read` examples from `spec`: notes for the reader (the header guessed,
    /// the bad rows skipped), or an error if no row was usable.
    pub fn notes(&self, spec: &str, read: usize) -> Result<Vec<String>> {
        if read == 0 {
            bail!(
                "{}: no usable rows ({} skipped)",
                self.rows.head.source,
                self.skipped
            );
        }
        let skipped =
            (self.skipped > 0).then(|| format!("{spec}: skipped {} bad rows", self.skipped));
        Ok(self.rows.head.note.iter().cloned().chain(skipped).collect())
    }
}

impl Iterator for Examples {
    type Item = Result<Example>;

    fn next(&mut self) -> Option<Result<Example>> {
        loop {
            let row = match self.rows.next()? {
                Ok(row) => row,
                Err(e) => return Some(Err(e)),
            };
            match self.example(&row) {
                Ok(e) => return Some(Ok(e)),
                Err(_) if self.skip_bad_rows => self.skipped += 1,
                Err(e) => {
                    return Some(Err(anyhow::anyhow!(
                        "{e:#} (pass {} to skip such rows)",
                        Setting::SkipBadRows
                    )))
                }
            }
        }
    }
}
