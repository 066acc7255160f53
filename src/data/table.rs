//! A small table model over CSV/TSV/JSONL: named columns, rows that remember their line.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::ops::Range;
use std::path::Path;
use std::rc::Rc;

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
    /// The file's first data row, where the text and label columns are found: a shard's
    /// `rows` may not hold it, and every shard must find the same columns.
    pub first: Option<Row>,
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
            let input = Checked::new(&source, Box::new(text.as_bytes()));
            let all = 0..usize::MAX;
            return Ok(parse(
                &source,
                input,
                Some(Format::Csv),
                HeaderMode::No,
                names,
                all,
            )?
            .0);
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
            parse_text(path, header, names, 0..usize::MAX)?.0
        };
        table.with_rows()
    }

    /// Reads shard `shard` of `path`'s rows. A file is read twice, its rows counted and then
    /// read up to the shard's end, so that memory holds the shard alone; standard input and
    /// Parquet are read whole.
    pub fn read_shard(
        path: &str,
        header: HeaderMode,
        names: &[String],
        shard: super::Shard,
    ) -> Result<Table> {
        if path == "-" || path.to_ascii_lowercase().ends_with(".parquet") {
            let mut table = Table::read(path, header, names)?;
            let keep = shard.range(table.rows.len());
            table.rows.truncate(keep.end);
            table.rows.drain(..keep.start);
            return Ok(table);
        }
        let (_, total) = parse_text(path, header, names, usize::MAX..usize::MAX)?;
        parse_text(path, header, names, shard.range(total))?
            .0
            .with_rows()
    }

    fn with_rows(self) -> Result<Table> {
        if self.first.is_none() {
            bail!("{}: no data rows", self.source);
        }
        Ok(self)
    }
}

/// The longest line a text file may hold. Lines are read whole, so this bounds the memory a
/// file without line breaks (a binary or a sparse file given by mistake) can take; a text
/// past a model's max length is scored from its head anyway.
pub const LINE_LIMIT: usize = 16 << 20;

/// The UTF-8 text of `path`, or of standard input for `-`; a line over [`LINE_LIMIT`] is an
/// error naming it, raised as soon as that much of it is read.
pub fn read_text(path: &str) -> Result<String> {
    let mut bytes = Vec::new();
    let mut input = Checked::open(path)?;
    let name = input.name.clone();
    input
        .read_to_end(&mut bytes)
        .map_err(|e| read_error(&name, e))?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        not_utf8(&name, line)
    })
}

fn not_utf8(name: &str, line: usize) -> anyhow::Error {
    anyhow!("{name} line {line}: not UTF-8 text; save the file as UTF-8")
}

/// A file as the readers take it: no line over [`LINE_LIMIT`] (an error naming it, raised
/// when that much of the line is read), and, for a parser that streams, its line ends noted
/// ([`LineNumbers`]).
struct Checked {
    inner: Box<dyn Read>,
    name: String,
    /// Bytes read, and where the line being read starts.
    offset: u64,
    line_start: u64,
    line: usize,
    ends: Option<Rc<RefCell<VecDeque<u64>>>>,
}

impl Checked {
    fn new(name: &str, inner: Box<dyn Read>) -> Checked {
        Checked {
            inner,
            name: name.to_string(),
            offset: 0,
            line_start: 0,
            line: 1,
            ends: None,
        }
    }

    /// The file `path`, or standard input for `-`.
    fn open(path: &str) -> Result<Checked> {
        Ok(match path {
            "-" => Checked::new("standard input", Box::new(std::io::stdin().lock())),
            _ => Checked::new(
                path,
                Box::new(std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?),
            ),
        })
    }

    /// The same, noting its line ends for the numbers returned.
    fn numbered(mut self) -> (Checked, LineNumbers) {
        let ends = Rc::new(RefCell::new(VecDeque::new()));
        self.ends = Some(ends.clone());
        (self, LineNumbers { ends, line: 1 })
    }

    fn check(&self, len: u64) -> std::io::Result<()> {
        match len > LINE_LIMIT as u64 {
            true => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "{} line {} is longer than {} MiB, the limit for one line: one row or document a line (a model reads only a text's first tokens anyway)",
                    self.name,
                    self.line,
                    LINE_LIMIT >> 20
                ),
            )),
            false => Ok(()),
        }
    }
}

impl Read for Checked {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (i, _) in buf[..n].iter().enumerate().filter(|(_, &b)| b == b'\n') {
            let at = self.offset + i as u64;
            self.check(at - self.line_start)?;
            if let Some(ends) = &self.ends {
                ends.borrow_mut().push_back(at);
            }
            (self.line, self.line_start) = (self.line + 1, at + 1);
        }
        self.offset += n as u64;
        self.check(self.offset - self.line_start)?;
        Ok(n)
    }
}

/// A read error: a line over the limit as it says, anything else as unreadable.
fn read_error(name: &str, e: std::io::Error) -> anyhow::Error {
    match e.kind() {
        std::io::ErrorKind::InvalidData => anyhow!(e),
        _ => anyhow!(e).context(format!("cannot read {name}")),
    }
}

/// Numbers a streamed file's lines by byte offset, from the line ends [`Checked`] noted; the
/// ends behind the parser are dropped, so that memory stays what the parser buffers.
struct LineNumbers {
    ends: Rc<RefCell<VecDeque<u64>>>,
    line: usize,
}

impl LineNumbers {
    /// 1 + the line ends before byte `at` (offsets must come in order).
    fn before(&mut self, at: u64) -> usize {
        let mut ends = self.ends.borrow_mut();
        while ends.front().is_some_and(|&e| e < at) {
            ends.pop_front();
            self.line += 1;
        }
        self.line
    }
}

/// Parses a CSV, TSV or JSONL file (the format from its extension, else from its first
/// line), keeping the data rows numbered `keep` (0-based) and reading no further; returns the
/// table and the data rows counted (all of them, unless `keep` ends first).
fn parse_text(
    path: &str,
    header: HeaderMode,
    names: &[String],
    keep: Range<usize>,
) -> Result<(Table, usize)> {
    let ext = Path::new(path)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let format = match ext.as_str() {
        "jsonl" | "ndjson" | "json" => Some(Format::Jsonl),
        "tsv" | "tab" => Some(Format::Tsv),
        "csv" => Some(Format::Csv),
        _ => None,
    };
    parse(path, Checked::open(path)?, format, header, names, keep)
}

/// [`parse_text`] on any input; `None` sniffs the format.
fn parse(
    name: &str,
    input: Checked,
    format: Option<Format>,
    header: HeaderMode,
    names: &[String],
    keep: Range<usize>,
) -> Result<(Table, usize)> {
    let (input, lines) = input.numbered();
    let mut input = BufReader::with_capacity(1 << 16, input);
    let head = input.fill_buf().map_err(|e| read_error(name, e))?;
    let bom = match head.starts_with("\u{feff}".as_bytes()) {
        true => 3,
        false => 0,
    };
    let format = format.unwrap_or_else(|| sniff(&head[bom..]));
    input.consume(bom);
    let from = (bom as u64, lines);
    let columns = (header, names);
    match format {
        Format::Jsonl => parse_jsonl(name, input, from, keep),
        Format::Csv => parse_delimited(name, input, from, (b',', true), columns, keep),
        Format::Tsv => parse_delimited(name, input, from, (b'\t', false), columns, keep),
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
        let first = self.first()?;
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
        let first = self.first()?;
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

    fn first(&self) -> Result<&Row> {
        self.first
            .as_ref()
            .with_context(|| format!("{}: no data rows", self.source))
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

/// The format of a file without a known extension, from its first (buffered) line.
fn sniff(head: &[u8]) -> Format {
    let first = head
        .split(|&b| b == b'\n')
        .find(|l| !l.trim_ascii().is_empty())
        .unwrap_or_default();
    if first.trim_ascii_start().starts_with(b"{") {
        Format::Jsonl
    } else if first.contains(&b'\t') {
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
    let mut objects = Objects::new(0..usize::MAX);
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
        objects.push(i + 1, Ok(Value::Object(obj)));
    }
    Ok(objects.table(path)?.0)
}

fn parse_jsonl(
    path: &str,
    mut input: impl BufRead,
    (mut offset, mut lines): (u64, LineNumbers),
    keep: Range<usize>,
) -> Result<(Table, usize)> {
    let mut objects = Objects::new(keep);
    let mut buf = Vec::new();
    // The first row always: every shard finds its columns there.
    while objects.count < objects.keep.end.max(1) {
        buf.clear();
        let n = input
            .read_until(b'\n', &mut buf)
            .map_err(|e| read_error(path, e))?;
        if n == 0 {
            break;
        }
        let line = lines.before(offset);
        offset += n as u64;
        let text = std::str::from_utf8(&buf).map_err(|_| not_utf8(path, line))?;
        if text.trim().is_empty() {
            continue;
        }
        objects.push(
            line,
            serde_json::from_str::<Value>(text).map_err(|e| format!("invalid JSON ({e})")),
        );
    }
    objects.table(path)
}

/// A JSONL line: an object, or why it is none.
type Line = Result<serde_json::Map<String, Value>, String>;

/// A table built from JSON objects, one a line (or why the line is none), as they are read:
/// it keeps those numbered `keep` and the first; its columns are the union of all their keys
/// in first-seen order.
struct Objects {
    keep: Range<usize>,
    columns: Vec<String>,
    kept: Vec<(usize, Line)>,
    first: Option<(usize, Line)>,
    count: usize,
    /// Whether any line held an object: a file where none does is not JSONL at all.
    any: bool,
}

impl Objects {
    fn new(keep: Range<usize>) -> Self {
        Objects {
            keep,
            columns: Vec::new(),
            kept: Vec::new(),
            first: None,
            count: 0,
            any: false,
        }
    }

    fn push(&mut self, line: usize, v: Result<Value, String>) {
        let obj = match v {
            Ok(Value::Object(obj)) => Ok(obj),
            Ok(_) => Err("expected a JSON object".to_string()),
            Err(e) => Err(e),
        };
        if let Ok(obj) = &obj {
            self.any = true;
            for k in obj.keys() {
                if !self.columns.contains(k) {
                    self.columns.push(k.clone());
                }
            }
        }
        if self.count == 0 {
            self.first = Some((line, obj.clone()));
        }
        if self.keep.contains(&self.count) {
            self.kept.push((line, obj));
        }
        self.count += 1;
    }

    /// The table, and the objects counted.
    fn table(self, path: &str) -> Result<(Table, usize)> {
        if let (false, Some((line, Err(e)))) = (self.any, &self.first) {
            bail!("{path} line {line}: {e}");
        }
        let columns = self.columns;
        let row = |(line, obj): (usize, Result<serde_json::Map<String, Value>, String>)| match obj {
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
        };
        let rows = self.kept.into_iter().map(row).collect();
        let first = self.first.map(row);
        let table = Table {
            source: path.to_string(),
            columns,
            rows,
            first,
            note: None,
        };
        Ok((table, self.count))
    }
}

/// Rows the header check reads: the first and the 20 below it (see [`numeric_below`]).
const HEADER_SAMPLE: usize = 21;

fn parse_delimited(
    path: &str,
    input: impl Read,
    (skipped, mut lines): (u64, LineNumbers),
    (delimiter, quoting): (u8, bool),
    (header, names): (HeaderMode, &[String]),
    keep: Range<usize>,
) -> Result<(Table, usize)> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(false)
        .flexible(true)
        .from_reader(input);
    let mut records = reader.byte_records();
    // Lines counted from the records' byte offsets: the csv crate's own line count runs one
    // short after CRLF line ends (STS-B's files are CRLF), and there it reports a record as
    // starting at the `\n` of the line end before it, so that byte is counted too.
    let mut next = || -> Result<Option<(usize, Vec<String>)>> {
        for rec in records.by_ref() {
            let rec = rec.map_err(|e| match e.kind() {
                csv::ErrorKind::Io(io) => {
                    read_error(path, std::io::Error::new(io.kind(), io.to_string()))
                }
                _ => anyhow!(e).context(format!(
                    "{path}: malformed {}",
                    if quoting { "CSV" } else { "TSV" }
                )),
            })?;
            let line = lines.before(skipped + rec.position().map_or(0, |p| p.byte() + 1));
            let fields = rec
                .iter()
                .map(|f| String::from_utf8(f.to_vec()).map_err(|_| not_utf8(path, line)))
                .collect::<Result<Vec<_>>>()?;
            if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                return Ok(Some((line, fields)));
            }
        }
        Ok(None)
    };
    let mut sample = Vec::new();
    while sample.len() < HEADER_SAMPLE {
        match next()? {
            Some(r) => sample.push(r),
            None => break,
        }
    }
    let mut note = None;
    let has_header = match (header, sample.first()) {
        (HeaderMode::Yes, _) => true,
        (HeaderMode::No, _) | (HeaderMode::Auto, None) => false,
        (HeaderMode::Auto, Some((_, first))) => {
            let header_like = looks_like_header(first);
            let named = first.iter().any(|f| names.iter().any(|n| n == f.trim()));
            let confirmed = header_like && (named || numeric_below(&sample));
            if header_like && !confirmed {
                note = Some(format!(
                    "{path}: the first row was read as data; if it names the columns, pass --header yes"
                ));
            }
            confirmed
        }
    };
    let mut sample = sample.into_iter();
    let columns: Vec<String> = match has_header {
        true => sample.next().map(|r| r.1).unwrap_or_default(),
        false => Vec::new(),
    };
    // Rows of the wrong width are kept as read: `Table::check` reports (or skips) them.
    let row = |(line, fields): (usize, Vec<String>)| Row {
        line,
        values: fields.into_iter().map(Value::String).collect(),
        error: None,
    };
    let (mut first, mut rows, mut count) = (None, Vec::new(), 0);
    let mut rest = sample
        .map(Ok)
        .chain(std::iter::from_fn(|| next().transpose()));
    while count < keep.end.max(1) {
        let Some(record) = rest.next().transpose()? else {
            break;
        };
        if count == 0 {
            first = Some(row(record.clone()));
        }
        if keep.contains(&count) {
            rows.push(row(record));
        }
        count += 1;
    }
    let columns = match has_header {
        true => columns,
        false => (0..first.as_ref().map_or(0, |r| r.values.len()))
            .map(|i| i.to_string())
            .collect(),
    };
    let table = Table {
        source: path.to_string(),
        columns,
        rows,
        first,
        note,
    };
    Ok((table, count))
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
