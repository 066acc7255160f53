//! A small table model over CSV/TSV/JSONL: named columns, rows that remember their line.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::io::Read;
use std::path::Path;

use super::Columns;

/// Whether the first CSV/TSV row is a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeaderMode {
    /// The first row is a header when it looks like one (short fields, no numbers) and either
    /// holds a column name the caller asks for or has text above a column that is numeric in
    /// the rows below; a header-like first row without that evidence is read as data, and the
    /// table's note says so.
    #[default]
    Auto,
    Yes,
    No,
}

#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line in the file.
    pub line: usize,
    pub values: Vec<Value>,
    /// Why the line could not be read as a row (invalid JSON, say): [`Table::check`] reports
    /// it, or `--skip-bad-rows` skips it like any other bad row.
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Table {
    /// The file name as the user gave it (`-` for standard input).
    pub source: String,
    pub columns: Vec<String>,
    pub rows: Vec<Row>,
    /// What the reader assumed that the user may want to override (shown on stderr).
    pub note: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Tsv,
    Jsonl,
}

impl Table {
    /// Reads a local file or `hf://datasets/...` spec (all of the split's files, concatenated).
    /// `names`: the columns the caller will ask for by name, which mark a first row that holds
    /// them as a header.
    pub fn read_source(
        spec: &str,
        split: &str,
        header: HeaderMode,
        names: &[String],
    ) -> Result<Table> {
        if spec == super::bundled::STSB {
            let (file, text) = super::bundled::stsb(split).with_context(|| {
                format!("{spec} has the splits train, validation and test, not \"{split}\"")
            })?;
            let source = format!("{spec} ({file})");
            return parse_delimited(&source, text, b',', true, HeaderMode::No, names);
        }
        let paths = super::resolve_source(spec, split)?;
        let mut tables = paths.iter().map(|p| Table::read(p, header, names));
        let mut table = tables.next().expect("resolve returns at least one file")?;
        for t in tables {
            let t = t?;
            if t.columns != table.columns {
                bail!(
                    "{}: columns differ from {} ({:?} vs {:?})",
                    t.source,
                    table.source,
                    t.columns,
                    table.columns
                );
            }
            table.rows.extend(t.rows);
        }
        table.source = spec.to_string();
        Ok(table)
    }

    /// Reads `path` (`-` for standard input); the format comes from the extension, or is
    /// sniffed from the content for standard input and unknown extensions.
    pub fn read(path: &str, header: HeaderMode, names: &[String]) -> Result<Table> {
        let table = if path.to_ascii_lowercase().ends_with(".parquet") {
            parse_parquet(path)?
        } else {
            read_text_table(path, header, names)?
        };
        if table.rows.is_empty() {
            bail!("{path}: no data rows");
        }
        Ok(table)
    }
}

/// The UTF-8 text of `path`, or of standard input for `-`.
pub fn read_text(path: &str) -> Result<String> {
    let mut text = String::new();
    if path == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read standard input")?;
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
        text = String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
            anyhow::anyhow!(
                "{path} line {line}: not UTF-8 text (byte {at}); save the file as UTF-8"
            )
        })?;
    }
    Ok(text)
}

fn read_text_table(path: &str, header: HeaderMode, names: &[String]) -> Result<Table> {
    let text = read_text(path)?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(&text);
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let format = match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Format::Jsonl,
        "tsv" | "tab" => Format::Tsv,
        "csv" => Format::Csv,
        _ => sniff(text),
    };
    match format {
        Format::Jsonl => parse_jsonl(path, text),
        Format::Csv => parse_delimited(path, text, b',', true, header, names),
        Format::Tsv => parse_delimited(path, text, b'\t', false, header, names),
    }
}

impl Table {
    /// Index of the column named (or numbered) `spec`.
    pub fn column(&self, spec: &str) -> Result<usize> {
        if let Some(i) = self.columns.iter().position(|c| c == spec) {
            return Ok(i);
        }
        if let Ok(i) = spec.parse::<usize>() {
            if i < self.columns.len() {
                return Ok(i);
            }
        }
        bail!(
            "{}: unknown column \"{spec}\" (columns: {})",
            self.source,
            self.columns
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }

    /// An error for a CSV/TSV row whose field count differs from the header's.
    pub fn check(&self, row: &Row) -> Result<()> {
        if let Some(e) = &row.error {
            bail!("{} line {}: {e}", self.source, row.line);
        }
        if row.values.len() != self.columns.len() {
            bail!(
                "{} line {}: expected {} fields, found {}",
                self.source,
                row.line,
                self.columns.len(),
                row.values.len()
            );
        }
        Ok(())
    }

    /// The two text columns: as given, else the first two columns whose first value is text.
    pub fn text_columns(&self, cols: &Columns) -> Result<(usize, usize)> {
        if let Some((a, b)) = &cols.texts {
            return Ok((self.column(a)?, self.column(b)?));
        }
        let first = &self.rows[0];
        let texts: Vec<usize> = (0..self.columns.len())
            .filter(|&i| {
                first
                    .values
                    .get(i)
                    .is_some_and(|v| v.is_string() && !is_number(v))
            })
            .collect();
        match texts.as_slice() {
            [a, b, ..] => Ok((*a, *b)),
            _ => bail!(
                "{}: need two text columns, found {} in line {} (columns: {}); pass --text-cols",
                self.source,
                texts.len(),
                first.line,
                self.columns.join(", ")
            ),
        }
    }

    /// The label column: as given, else the first numeric column after the text columns.
    pub fn label_column(&self, cols: &Columns) -> Result<usize> {
        let (a, b) = self.text_columns(cols)?;
        if let Some(l) = &cols.label {
            let l = self.column(l)?;
            // The label would be part of the input: a model trained on it learns nothing else.
            if l == a || l == b {
                bail!(
                    "{}: the label column \"{}\" is also a text column: --label-col and --text-cols must name different columns",
                    self.source,
                    self.columns[l]
                );
            }
            return Ok(l);
        }
        let first = &self.rows[0];
        (0..self.columns.len())
            .find(|&i| {
                i != a && i != b && i > a.min(b) && first.values.get(i).is_some_and(is_number)
            })
            .or_else(|| {
                (0..self.columns.len())
                    .find(|&i| i != a && i != b && first.values.get(i).is_some_and(is_number))
            })
            .with_context(|| {
                format!(
                    "{}: no numeric label column found; pass --label-col",
                    self.source
                )
            })
    }

    /// The text in column `col` of `row` (numbers are taken as text too).
    pub fn text(&self, row: &Row, col: usize) -> Result<String> {
        match row.values.get(col) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(Value::Null) | None => bail!(
                "{} line {}: missing column \"{}\"",
                self.source,
                row.line,
                self.columns[col]
            ),
            Some(other) => bail!(
                "{} line {}: column \"{}\" is not text: {other}",
                self.source,
                row.line,
                self.columns[col]
            ),
        }
    }

    /// The number in column `col` of `row`.
    pub fn number(&self, row: &Row, col: usize) -> Result<f64> {
        let v = row.values.get(col);
        let n = match v {
            Some(Value::Number(n)) => n.as_f64(),
            Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
            Some(Value::Bool(b)) => Some(if *b { 1.0 } else { 0.0 }),
            _ => None,
        };
        n.filter(|x| x.is_finite()).with_context(|| {
            format!(
                "{} line {}: label column \"{}\" is not a number: {}",
                self.source,
                row.line,
                self.columns[col],
                v.map_or("missing".to_string(), |v| v.to_string())
            )
        })
    }
}

impl Table {
    /// The index of the row's label among `names` (by name, or as a 0-based index).
    pub fn class(&self, row: &Row, col: usize, names: &[String]) -> Result<f64> {
        let v = self.text(row, col)?;
        let v = v.trim();
        names
            .iter()
            .position(|n| n == v)
            .or_else(|| v.parse::<usize>().ok().filter(|&i| i < names.len()))
            .map(|i| i as f64)
            .with_context(|| {
                format!(
                    "{} line {}: label \"{v}\" in column \"{}\" is not one of --labels {}",
                    self.source,
                    row.line,
                    self.columns[col],
                    names.join(",")
                )
            })
    }
}

fn is_number(v: &Value) -> bool {
    match v {
        Value::Number(_) => true,
        Value::String(s) => s.trim().parse::<f64>().is_ok_and(f64::is_finite),
        _ => false,
    }
}

fn sniff(text: &str) -> Format {
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    if first.trim_start().starts_with('{') {
        Format::Jsonl
    } else if first.contains('\t') {
        Format::Tsv
    } else {
        Format::Csv
    }
}

/// Without the `parquet` feature: says how to get it.
#[cfg(not(feature = "parquet"))]
fn parse_parquet(path: &str) -> Result<Table> {
    anyhow::bail!(
        "{path}: this crossenc was built without Parquet support (cargo feature `parquet`)"
    )
}

/// Parquet through the record API: each row becomes a JSON object, then as JSONL.
#[cfg(feature = "parquet")]
fn parse_parquet(path: &str) -> Result<Table> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{path} is not a valid Parquet file"))?;
    let mut objects = Vec::new();
    let rows = reader
        .get_row_iter(None)
        .with_context(|| format!("cannot read rows of {path}"))?;
    for (i, row) in rows.enumerate() {
        let row = row.with_context(|| format!("{path} row {}: unreadable", i + 1))?;
        // JSON has no NaN or infinity (to_json_value writes null): keep them as text, so that
        // a bad label is reported as what it is.
        let obj = row
            .get_column_iter()
            .map(|(name, field)| {
                let v = match field {
                    Field::Float(f) if !f.is_finite() => Value::String(f.to_string()),
                    Field::Double(f) if !f.is_finite() => Value::String(f.to_string()),
                    f => f.to_json_value(),
                };
                (name.clone(), v)
            })
            .collect();
        objects.push((i + 1, Ok(Value::Object(obj))));
    }
    from_objects(path, objects)
}

fn parse_jsonl(path: &str, text: &str) -> Result<Table> {
    let mut objects = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str::<Value>(line).map_err(|e| format!("invalid JSON ({e})"));
        objects.push((i + 1, v));
    }
    from_objects(path, objects)
}

/// A table from JSON objects, one a line (or why the line is none); the columns are the union
/// of their keys in first-seen order.
fn from_objects(path: &str, values: Vec<(usize, Result<Value, String>)>) -> Result<Table> {
    let mut columns: Vec<String> = Vec::new();
    let mut objects = Vec::with_capacity(values.len());
    for (line, v) in values {
        let obj = match v {
            Ok(Value::Object(obj)) => Ok(obj),
            Ok(_) => Err("expected a JSON object".to_string()),
            Err(e) => Err(e),
        };
        if let Ok(obj) = &obj {
            for k in obj.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
        objects.push((line, obj));
    }
    if objects.iter().all(|(_, o)| o.is_err()) {
        if let Some((line, Err(e))) = objects.first() {
            bail!("{path} line {line}: {e}");
        }
    }
    let rows = objects
        .into_iter()
        .map(|(line, obj)| match obj {
            Ok(mut obj) => Row {
                line,
                values: columns
                    .iter()
                    .map(|c| obj.remove(c).unwrap_or(Value::Null))
                    .collect(),
                error: None,
            },
            Err(e) => Row {
                line,
                values: Vec::new(),
                error: Some(e),
            },
        })
        .collect();
    Ok(Table {
        source: path.to_string(),
        columns,
        rows,
        note: None,
    })
}

fn parse_delimited(
    path: &str,
    text: &str,
    delimiter: u8,
    quoting: bool,
    header: HeaderMode,
    names: &[String],
) -> Result<Table> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = Vec::new();
    // Lines counted from the records' byte offsets: the csv crate's own line count runs one
    // short after CRLF line ends (STS-B's files are CRLF), and there it reports a record as
    // starting at the `\n` of the line end before it, so that byte is counted too.
    let (mut seen, mut line) = (0usize, 1usize);
    for rec in reader.records() {
        let rec = rec.with_context(|| {
            format!("{path}: malformed {}", if quoting { "CSV" } else { "TSV" })
        })?;
        if let Some(p) = rec.position() {
            let upto = (p.byte() as usize + 1).min(text.len());
            line += text.as_bytes()[seen.min(upto)..upto]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            seen = upto;
        }
        if rec.len() == 1 && rec[0].trim().is_empty() {
            continue;
        }
        records.push((line, rec.iter().map(str::to_string).collect::<Vec<_>>()));
    }
    let mut note = None;
    let has_header = match (header, records.first()) {
        (HeaderMode::Yes, _) => true,
        (HeaderMode::No, _) | (HeaderMode::Auto, None) => false,
        (HeaderMode::Auto, Some((_, first))) => {
            let header_like = looks_like_header(first);
            let named = first.iter().any(|f| names.iter().any(|n| n == f.trim()));
            let confirmed = header_like && (named || numeric_below(&records));
            if header_like && !confirmed {
                note = Some(format!(
                    "{path}: the first row was read as data; if it names the columns, pass --header yes"
                ));
            }
            confirmed
        }
    };
    let columns: Vec<String> = if has_header && !records.is_empty() {
        records.remove(0).1
    } else {
        (0..records.first().map_or(0, |r| r.1.len()))
            .map(|i| i.to_string())
            .collect()
    };
    // Rows of the wrong width are kept as read: `Table::check` reports (or skips) them.
    let rows = records
        .into_iter()
        .map(|(line, fields)| Row {
            line,
            values: fields.into_iter().map(Value::String).collect(),
            error: None,
        })
        .collect();
    Ok(Table {
        source: path.to_string(),
        columns,
        rows,
        note,
    })
}

/// Whether some column holds a number in every one of the (up to 20) rows after the first:
/// a label column, whose first-row text must then be its name.
fn numeric_below(records: &[(usize, Vec<String>)]) -> bool {
    let below: Vec<&Vec<String>> = records.iter().skip(1).take(20).map(|r| &r.1).collect();
    let width = records.first().map_or(0, |r| r.1.len());
    !below.is_empty()
        && (0..width).any(|c| {
            below
                .iter()
                .all(|r| r.get(c).is_some_and(|f| f.trim().parse::<f64>().is_ok()))
        })
}

/// Column names are short and carry no number or sentence punctuation; data rows of pair
/// files are sentences or carry a numeric label.
fn looks_like_header(fields: &[String]) -> bool {
    fields.iter().all(|f| {
        let f = f.trim();
        !f.is_empty()
            && f.parse::<f64>().is_err()
            && f.len() <= 40
            && f.split_whitespace().count() <= 4
            && !f.ends_with(['.', '?', '!'])
    })
}
