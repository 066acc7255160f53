//! A small table model over CSV/TSV/JSONL: named columns, rows that remember their line.

use crate::setting::Setting;
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
    /// The first row is a header.
    Yes,
    /// Every row is data.
    No,
}

/// One row of a table, as read.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line in the file.
    pub line: usize,
    /// The row's fields, strings or numbers (JSON values).
    pub values: Vec<Value>,
    /// Why the line could not be read as a row (invalid JSON, say): [`Table::check`] reports
    /// it, or `--skip-bad-rows` skips it like any other bad row.
    pub error: Option<String>,
}

/// A file's rows read whole (or one shard's block of them), with its columns.
#[derive(Debug, Clone)]
pub struct Table {
    /// The file name as the user gave it (`-` for standard input).
    pub source: String,
    /// The column names (from the header, or the JSON keys; `0`, `1`, ... without).
    pub columns: Vec<String>,
    /// The data rows.
    pub rows: Vec<Row>,
    /// The file's first data row, where the text and label columns are found: a shard's
    /// `rows` may not hold it, and every shard must find the same columns.
    pub first: Option<Row>,
    /// What the reader assumed that the user may want to override (shown on stderr).
    pub note: Option<String>,
    /// CSV/TSV: every row must have the columns' number of fields. (A JSONL row lacking a key
    /// holds null there.)
    pub fixed_width: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Csv,
    Tsv,
    Jsonl,
}

impl Table {
    /// Reads a local file, the bundled STS-B or a hub dataset's split (see [`Rows::open_source`]).
    pub fn read_source(
        spec: &str,
        split: &str,
        header: HeaderMode,
        names: &[String],
    ) -> Result<Table> {
        Rows::open_source(spec, split, header, names)?.collect_table()
    }

    /// Reads `path` (`-` for standard input); the format comes from the extension, or is
    /// sniffed from the content for standard input and unknown extensions.
    pub fn read(path: &str, header: HeaderMode, names: &[String]) -> Result<Table> {
        Rows::open(path, header, names, 0..usize::MAX)?.collect_table()
    }
}

/// A file's rows as they are read, each once: memory holds what the parser buffers, whatever
/// the file's size. `head` has the file's columns and first data row, and no rows.
pub struct Rows {
    /// The file's columns and first data row, no rows.
    pub head: Table,
    parser: Parser,
    /// The data rows yielded: those numbered (0-based) in `keep`.
    keep: Range<usize>,
    /// Data rows met so far, yielded or not.
    count: usize,
    /// Rows read ahead (the first ones, to find the columns) and not yet counted.
    pending: VecDeque<Row>,
    failed: bool,
}

enum Parser {
    Jsonl {
        input: BufReader<Checked>,
        offset: u64,
        lines: LineNumbers,
    },
    Delimited {
        records: csv::ByteRecordsIntoIter<BufReader<Checked>>,
        /// Bytes before the records (a byte order mark).
        skipped: u64,
        lines: LineNumbers,
        quoting: bool,
    },
    /// Rows read whole (Parquet, several files of a hub dataset).
    Read(std::vec::IntoIter<Row>),
}

impl Rows {
    /// `path`'s data rows numbered `keep` (0-based), as [`Table::read`] reads the file.
    pub fn open(
        path: &str,
        header: HeaderMode,
        names: &[String],
        keep: Range<usize>,
    ) -> Result<Rows> {
        if path.to_ascii_lowercase().ends_with(".parquet") {
            let mut table = parse_parquet(path)?;
            let rows = std::mem::take(&mut table.rows);
            let rows: Vec<Row> = rows.into_iter().take(keep.end).skip(keep.start).collect();
            return Ok(Rows::read(table, rows));
        }
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
        Rows::parse(path, Checked::open(path)?, format, header, names, keep)
    }

    /// [`Rows::open`] on a local file, the bundled STS-B or a hub dataset's split (all of the
    /// split's files, concatenated). `names`: the columns the caller will ask for by name,
    /// which mark a first row that holds them as a header.
    pub fn open_source(
        spec: &str,
        split: &str,
        header: HeaderMode,
        names: &[String],
    ) -> Result<Rows> {
        if spec == super::bundled::STSB {
            let (file, text) = super::bundled::stsb(split).with_context(|| {
                format!("{spec} has the splits train, validation and test, not \"{split}\"")
            })?;
            let source = format!("{spec} ({file})");
            let input = Checked::new(&source, Box::new(text.as_bytes()));
            let all = 0..usize::MAX;
            return Rows::parse(
                &source,
                input,
                Some(Format::Csv),
                HeaderMode::No,
                names,
                all,
            );
        }
        let paths = super::resolve_source(spec, split)?;
        if let [path] = paths.as_slice() {
            if path == spec {
                return Rows::open(path, header, names, 0..usize::MAX);
            }
        }
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
        let rows = std::mem::take(&mut table.rows);
        Ok(Rows::read(table, rows))
    }

    /// Shard `shard` of `path`'s rows. A file is read twice, its rows counted and then read
    /// up to the shard's end, so that memory holds what one row takes; standard input and
    /// Parquet are read whole.
    pub fn open_shard(
        path: &str,
        header: HeaderMode,
        names: &[String],
        shard: super::Shard,
    ) -> Result<Rows> {
        if path == "-" || path.to_ascii_lowercase().ends_with(".parquet") {
            let mut table = Table::read(path, header, names)?;
            let rows = std::mem::take(&mut table.rows);
            let keep = shard.range(rows.len());
            let rows = rows.into_iter().take(keep.end).skip(keep.start).collect();
            return Ok(Rows::read(table, rows));
        }
        let mut all = Rows::open(path, header, names, usize::MAX..usize::MAX)?;
        for row in all.by_ref() {
            row?;
        }
        Rows::open(path, header, names, shard.range(all.count))
    }

    /// A table's rows.
    pub fn of(mut table: Table) -> Rows {
        let rows = std::mem::take(&mut table.rows);
        Rows::read(table, rows)
    }

    fn read(head: Table, rows: Vec<Row>) -> Rows {
        Rows {
            head,
            keep: 0..usize::MAX,
            count: 0,
            pending: VecDeque::new(),
            failed: false,
            parser: Parser::Read(rows.into_iter()),
        }
    }

    /// Every row, in a table.
    pub fn collect_table(mut self) -> Result<Table> {
        let rows = self.by_ref().collect::<Result<Vec<Row>>>()?;
        let mut table = self.head;
        let width = table.columns.len();
        table.rows = rows;
        if !table.fixed_width {
            // Keys first met below a row pad it with nulls, as the row lacks them.
            for r in table.rows.iter_mut().filter(|r| r.error.is_none()) {
                r.values.resize(width, Value::Null);
            }
        }
        if table.first.is_none() {
            bail!("{}: no data rows", table.source);
        }
        Ok(table)
    }

    /// Bytes of the file read so far (past the rows yielded by what the parser buffers).
    pub fn bytes_read(&self) -> u64 {
        match &self.parser {
            Parser::Jsonl { offset, .. } => *offset,
            Parser::Delimited { records, .. } => records.reader().get_ref().get_ref().offset,
            Parser::Read(_) => 0,
        }
    }

    /// [`Rows::open`] on any input; `None` sniffs the format. Reads the first data row (and,
    /// for CSV/TSV, enough rows to tell a header).
    fn parse(
        name: &str,
        input: Checked,
        format: Option<Format>,
        header: HeaderMode,
        names: &[String],
        keep: Range<usize>,
    ) -> Result<Rows> {
        let (input, lines) = input.numbered();
        let mut input = BufReader::with_capacity(1 << 16, input);
        let head = input.fill_buf().map_err(|e| read_error(name, e))?;
        let bom = match head.starts_with("\u{feff}".as_bytes()) {
            true => 3,
            false => 0,
        };
        let format = format.unwrap_or_else(|| sniff(&head[bom..]));
        input.consume(bom);
        let mut rows = Rows {
            head: Table {
                source: name.to_string(),
                columns: Vec::new(),
                rows: Vec::new(),
                first: None,
                note: None,
                fixed_width: format != Format::Jsonl,
            },
            parser: Parser::Read(Vec::new().into_iter()),
            keep,
            count: 0,
            pending: VecDeque::new(),
            failed: false,
        };
        match format {
            Format::Jsonl => {
                rows.parser = Parser::Jsonl {
                    input,
                    offset: bom as u64,
                    lines,
                };
                rows.find_first_object()?;
            }
            Format::Csv | Format::Tsv => {
                let (delimiter, quoting) = match format {
                    Format::Csv => (b',', true),
                    _ => (b'\t', false),
                };
                let records = csv::ReaderBuilder::new()
                    .delimiter(delimiter)
                    .quoting(quoting)
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(input)
                    .into_byte_records();
                rows.parser = Parser::Delimited {
                    records,
                    skipped: bom as u64,
                    lines,
                    quoting,
                };
                rows.read_header(header, names)?;
            }
        }
        Ok(rows)
    }

    /// Reads up to the first line that holds a JSON object, the first row: its keys are the
    /// columns. Lines before it are kept as rows in error; a file where none of the first
    /// [`HEADER_SAMPLE`] lines holds an object is not JSONL at all.
    fn find_first_object(&mut self) -> Result<()> {
        while let Some(row) = self.parse_row(true)? {
            let found = row.error.is_none();
            self.pending.push_back(row);
            if found {
                self.head.first = self.pending.back().cloned();
                return Ok(());
            }
            if self.pending.len() >= HEADER_SAMPLE {
                break;
            }
        }
        match self.pending.front() {
            Some(Row {
                line,
                error: Some(e),
                ..
            }) => bail!("{} line {line}: {e}", self.head.source),
            _ => Ok(()),
        }
    }

    /// Reads the first rows of a CSV/TSV file to tell whether the first is a header (see
    /// [`HeaderMode::Auto`]), and sets the columns.
    fn read_header(&mut self, header: HeaderMode, names: &[String]) -> Result<()> {
        while self.pending.len() < HEADER_SAMPLE {
            match self.parse_row(true)? {
                Some(r) => self.pending.push_back(r),
                None => break,
            }
        }
        let fields = |r: &Row| -> Vec<String> {
            r.values
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        };
        let sample: Vec<Vec<String>> = self.pending.iter().map(fields).collect();
        let has_header = match (header, sample.first()) {
            (HeaderMode::Yes, _) => true,
            (HeaderMode::No, _) | (HeaderMode::Auto, None) => false,
            (HeaderMode::Auto, Some(first)) => {
                let header_like = looks_like_header(first);
                let named = first.iter().any(|f| names.iter().any(|n| n == f.trim()));
                let confirmed = header_like && (named || numeric_below(&sample));
                if header_like && !confirmed {
                    self.head.note = Some(format!(
                        "{}: the first row was read as data; if it names the columns, pass {} yes",
                        self.head.source,
                        Setting::Header
                    ));
                }
                confirmed
            }
        };
        if has_header {
            self.head.columns = sample.into_iter().next().unwrap_or_default();
            self.pending.pop_front();
        }
        self.head.first = self.pending.front().cloned();
        if !has_header {
            let width = self.head.first.as_ref().map_or(0, |r| r.values.len());
            self.head.columns = (0..width).map(|i| i.to_string()).collect();
        }
        Ok(())
    }

    /// The next row the file holds: read ahead, else parsed now.
    fn read_row(&mut self, parse: bool) -> Result<Option<Row>> {
        match self.pending.pop_front() {
            Some(row) => Ok(Some(row)),
            None => self.parse_row(parse),
        }
    }

    /// The parser's next row; `parse` false leaves a JSONL row that is only counted unparsed
    /// (its values empty).
    fn parse_row(&mut self, parse: bool) -> Result<Option<Row>> {
        let path = self.head.source.as_str();
        let (line, obj) = match &mut self.parser {
            Parser::Read(rows) => return Ok(rows.next()),
            Parser::Delimited {
                records,
                skipped,
                lines,
                quoting,
            } => {
                // Lines counted from the records' byte offsets: the csv crate's own line count
                // runs one short after CRLF line ends (STS-B's files are CRLF), and there it
                // reports a record as starting at the `\n` of the line end before it, so that
                // byte is counted too.
                for rec in records.by_ref() {
                    let rec = rec.map_err(|e| match e.kind() {
                        csv::ErrorKind::Io(io) => {
                            read_error(path, std::io::Error::new(io.kind(), io.to_string()))
                        }
                        _ => anyhow!(e).context(format!(
                            "{path}: malformed {}",
                            if *quoting { "CSV" } else { "TSV" }
                        )),
                    })?;
                    let line = lines.before(*skipped + rec.position().map_or(0, |p| p.byte() + 1));
                    let fields = rec
                        .iter()
                        .map(|f| String::from_utf8(f.to_vec()).map_err(|_| not_utf8(path, line)))
                        .collect::<Result<Vec<_>>>()?;
                    if !(fields.len() == 1 && fields[0].trim().is_empty()) {
                        // Rows of the wrong width are kept as read: `Table::check` reports
                        // (or skips) them.
                        let values = fields.into_iter().map(Value::String).collect();
                        return Ok(Some(Row {
                            line,
                            values,
                            error: None,
                        }));
                    }
                }
                return Ok(None);
            }
            Parser::Jsonl {
                input,
                offset,
                lines,
            } => {
                let mut buf = Vec::new();
                loop {
                    buf.clear();
                    let n = input
                        .read_until(b'\n', &mut buf)
                        .map_err(|e| read_error(path, e))?;
                    if n == 0 {
                        return Ok(None);
                    }
                    let line = lines.before(*offset);
                    *offset += n as u64;
                    let text = std::str::from_utf8(&buf).map_err(|_| not_utf8(path, line))?;
                    if text.trim().is_empty() {
                        continue;
                    }
                    if !parse {
                        return Ok(Some(Row {
                            line,
                            values: Vec::new(),
                            error: None,
                        }));
                    }
                    let obj = match serde_json::from_str::<Value>(text) {
                        Ok(Value::Object(obj)) => Ok(obj),
                        Ok(_) => Err("expected a JSON object".to_string()),
                        Err(e) => Err(format!("invalid JSON ({e})")),
                    };
                    break (line, obj);
                }
            }
        };
        Ok(Some(self.object_row(line, obj)))
    }

    /// A JSONL row: the object's values under the columns so far, its new keys new columns.
    fn object_row(
        &mut self,
        line: usize,
        obj: Result<serde_json::Map<String, Value>, String>,
    ) -> Row {
        match obj {
            Ok(mut obj) => {
                let columns = &mut self.head.columns;
                for k in obj.keys() {
                    if !columns.contains(k) {
                        columns.push(k.clone());
                    }
                }
                let values = columns
                    .iter()
                    .map(|c| obj.remove(c).unwrap_or(Value::Null))
                    .collect();
                Row {
                    line,
                    values,
                    error: None,
                }
            }
            Err(e) => Row {
                line,
                values: Vec::new(),
                error: Some(e),
            },
        }
    }
}

impl Iterator for Rows {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        while !self.failed && self.count < self.keep.end {
            let keep = self.keep.contains(&self.count);
            match self.read_row(keep) {
                Ok(Some(row)) => {
                    self.count += 1;
                    if keep {
                        return Some(Ok(row));
                    }
                }
                Ok(None) => return None,
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        None
    }
}

/// The longest line a text file may hold. Lines are read whole, so this bounds the memory a
/// file without line breaks (a binary or a sparse file given by mistake) can take; a text
/// past a model's max length is scored from its head anyway.
pub const LINE_LIMIT: usize = 16 << 20;

/// The UTF-8 text of `path`, or of standard input for `-`; a line over 16 MB (`LINE_LIMIT`) is an
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

/// The lines of `path` (`-`: standard input) as they are read, numbered from 1, without
/// their line ends; a line over 16 MB (`LINE_LIMIT`) or not UTF-8 is an error naming it.
pub fn read_lines(path: &str) -> Result<impl Iterator<Item = Result<(usize, String)>>> {
    let input = Checked::open(path)?;
    let name = input.name.clone();
    let mut input = BufReader::with_capacity(1 << 16, input);
    let (mut line, mut failed) = (0, false);
    Ok(std::iter::from_fn(move || {
        let mut buf = Vec::new();
        let read = match failed {
            true => return None,
            false => input.read_until(b'\n', &mut buf),
        };
        line += 1;
        let text = match read {
            Ok(0) => return None,
            Ok(_) => {
                let end = buf.strip_suffix(b"\n").map_or(buf.len(), <[u8]>::len);
                let end = buf[..end].strip_suffix(b"\r").map_or(end, <[u8]>::len);
                buf.truncate(end);
                String::from_utf8(buf).map_err(|_| not_utf8(&name, line))
            }
            Err(e) => Err(read_error(&name, e)),
        };
        failed = text.is_err();
        Some(text.map(|t| (line, t)))
    }))
}

fn not_utf8(name: &str, line: usize) -> anyhow::Error {
    anyhow!("{name} line {line}: not UTF-8 text; save the file as UTF-8")
}

/// A file as the readers take it: no line over 16 MB (`LINE_LIMIT`) (an error naming it, raised
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
                "{}: need two text columns, found {} in line {} (columns: {}); pass {}",
                self.source,
                texts.len(),
                first.line,
                self.columns.join(", "),
                Setting::TextColumns
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
                    "{}: the label column \"{}\" is also a text column: {} and {} must name different columns",
                    self.source,
                    self.columns[l],
                    Setting::LabelColumn,
                    Setting::TextColumns
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
                    "{}: no numeric label column found; pass {}",
                    self.source,
                    Setting::LabelColumn
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
                    "{} line {}: label \"{v}\" in column \"{}\" is not one of {} {}",
                    self.source,
                    row.line,
                    self.columns[col],
                    Setting::Labels,
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

/// Parquet through the record API: each row becomes a JSON object, read as a JSONL line is.
#[cfg(feature = "parquet")]
fn parse_parquet(path: &str) -> Result<Table> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let file = std::fs::File::open(path).with_context(|| format!("cannot read {path}"))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("{path} is not a valid Parquet file"))?;
    let mut rows = Rows::read(
        Table {
            source: path.to_string(),
            columns: Vec::new(),
            rows: Vec::new(),
            first: None,
            note: None,
            fixed_width: false,
        },
        Vec::new(),
    );
    let mut read = Vec::new();
    let records = reader
        .get_row_iter(None)
        .with_context(|| format!("cannot read rows of {path}"))?;
    for (i, record) in records.enumerate() {
        let record = record.with_context(|| format!("{path} row {}: unreadable", i + 1))?;
        // JSON has no NaN or infinity (to_json_value writes null): keep them as text, so that
        // a bad label is reported as what it is.
        let obj = record
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
        read.push(rows.object_row(i + 1, Ok(obj)));
    }
    let mut table = rows.head;
    table.first = read.first().cloned();
    table.rows = read;
    Ok(table)
}

/// Rows the header check reads: the first and the 20 below it (see [`numeric_below`]).
const HEADER_SAMPLE: usize = 21;

/// Whether some column holds a number in every one of the (up to 20) rows after the first:
/// a label column, whose first-row text must then be its name.
fn numeric_below(records: &[Vec<String>]) -> bool {
    let below: Vec<&Vec<String>> = records.iter().skip(1).take(20).collect();
    let width = records.first().map_or(0, Vec::len);
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
