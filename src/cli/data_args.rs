//! Column and label options shared by `train` and `eval`.

use anyhow::Result;
use clap::Args;

use crossenc::data::{Columns, ReadOptions};

#[derive(Args, Clone)]
pub struct DataArgs {
    /// The two text columns, by name or 0-based index (default: the first two text columns).
    #[arg(long)]
    pub text_cols: Option<String>,
    /// The label column, by name or index (default: the first numeric column after the texts).
    #[arg(long)]
    pub label_col: Option<String>,
    /// Whether the first CSV/TSV row is a header.
    #[arg(long, value_enum, default_value = "auto")]
    pub header: super::predict::Header,
    /// Skip rows with a bad label or a wrong number of fields (and count them) instead of failing.
    #[arg(long)]
    pub skip_bad_rows: bool,
    /// Map labels linearly from LO:HI into [0, 1], e.g. 0:5 for STS-B's raw scores.
    #[arg(long, value_parser = parse_label_range)]
    pub label_range: Option<(f64, f64)>,
    /// Class names, in the order of the model's outputs (`--task multiclass`): the label column
    /// holds a name or its 0-based index.
    #[arg(long, value_delimiter = ',')]
    pub labels: Option<Vec<String>>,
}

/// Parses `LO:HI` with LO < HI (`--label-range 0:5`, `--neg-range 10:100`).
pub fn parse_span<T>(s: &str) -> Result<(T, T), String>
where
    T: std::str::FromStr + PartialOrd + std::fmt::Display,
{
    let (lo, hi) = s.split_once(':').ok_or("expected LO:HI, e.g. 0:5")?;
    let parse = |v: &str| {
        v.trim()
            .parse::<T>()
            .map_err(|_| format!("\"{v}\" is not a valid bound"))
    };
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    // Written so that NaN fails too.
    if lo.partial_cmp(&hi) != Some(std::cmp::Ordering::Less) {
        return Err(format!("{lo}:{hi} is not a range: LO must be below HI"));
    }
    Ok((lo, hi))
}

/// `--label-range LO:HI` with finite ends: an infinite one maps every label to 0 or NaN.
fn parse_label_range(s: &str) -> Result<(f64, f64), String> {
    let (lo, hi) = parse_span::<f64>(s)?;
    if !(lo.is_finite() && hi.is_finite()) {
        return Err(format!("the range {lo}:{hi} has an infinite end"));
    }
    Ok((lo, hi))
}

impl DataArgs {
    /// The library's reading options these flags give.
    pub fn options(&self) -> Result<ReadOptions> {
        Ok(ReadOptions {
            columns: Columns {
                texts: self
                    .text_cols
                    .as_deref()
                    .map(Columns::parse_text_cols)
                    .transpose()?,
                label: self.label_col.clone(),
                label_names: self.labels.clone(),
            },
            header: self.header.into(),
            skip_bad_rows: self.skip_bad_rows,
            label_range: self.label_range,
        })
    }
}
