use anyhow::{bail, Context, Result};
use clap::Args;
use crossenc::Output;
use serde_json::json;
use std::io::Write;

use super::ModelArgs;
use crossenc::data::{Columns, HeaderMode, Picker, Rows, Shard};
use crossenc::progress::Progress;
use crossenc::stream;

#[derive(Args)]
pub struct PredictArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Pairs to score: CSV/TSV (with or without a header), JSONL, or - for standard input.
    #[arg(long, short)]
    input: String,
    /// The two text columns, by name or 0-based index (default: the first two text columns).
    #[arg(long)]
    text_cols: Option<String>,
    /// Whether the first CSV/TSV row is a header.
    #[arg(long, value_enum, default_value = "auto")]
    header: Header,
    /// Print raw logits instead of activated scores.
    #[arg(long)]
    raw: bool,
    /// Score only shard I of N (0-based; a contiguous block of the rows), each output line
    /// with its input `line`: N copies (a Kubernetes Indexed Job, a Slurm array) cover the
    /// input, and their outputs concatenated in shard order are one run's.
    #[arg(long, value_name = "I/N")]
    shard: Option<Shard>,
    /// Write the scores to this file (replaced whole, so a retried shard never leaves half a
    /// file) instead of standard output.
    #[arg(long, short)]
    output: Option<std::path::PathBuf>,
    /// No progress bar (it is shown only on a terminal anyway).
    #[arg(long, short)]
    quiet: bool,
}

#[derive(clap::ValueEnum, Clone, Copy)]
pub enum Header {
    Auto,
    Yes,
    No,
}

impl From<Header> for HeaderMode {
    fn from(h: Header) -> Self {
        match h {
            Header::Auto => HeaderMode::Auto,
            Header::Yes => HeaderMode::Yes,
            Header::No => HeaderMode::No,
        }
    }
}

/// A chunk's rows as the writer needs them besides their scores.
struct Chunk {
    lines: Vec<usize>,
    /// Notes on this chunk's texts cut to their heads (the first few of the run).
    notes: Vec<String>,
    /// Rows with a cut text.
    cut: usize,
    /// Input bytes read by the end of the chunk.
    bytes: u64,
}

/// Rows with a text cut to its head that are named on stderr; the rest are counted.
const NOTES_SHOWN: usize = 5;

pub fn run(args: PredictArgs) -> Result<()> {
    if let Some(out) = &args.output {
        let same = |a: &std::path::Path| std::fs::canonicalize(a).ok();
        if args.input != "-" && same(out).is_some() && same(out) == same(args.input.as_ref()) {
            bail!(
                "--output {} is the input file: its scores would replace the pairs; write them elsewhere",
                out.display()
            );
        }
    }
    let cols = Columns {
        texts: args
            .text_cols
            .as_deref()
            .map(Columns::parse_text_cols)
            .transpose()?,
        label: None,
        label_names: None,
    };
    let ce = args.model.load()?;
    let bytes = (args.input != "-")
        .then(|| std::fs::metadata(&args.input).ok().map(|m| m.len()))
        .flatten();
    let bar = super::Bar::pairs(args.quiet, bytes);
    let write = |out: &mut dyn Write, dest: &str| -> Result<()> {
        let failed = || format!("cannot write to {dest}");
        let (mut pairs, mut cut) = (0usize, 0usize);
        stream::score(
            &ce,
            |send| read(&args, &cols, &ce, send),
            match args.raw {
                true => Output::Logits,
                false => Output::Activated,
            },
            |chunk: Chunk, scores| {
                for (row, line) in scores.rows().zip(&chunk.lines) {
                    let mut json = if row.len() == 1 {
                        json!({ "score": row[0] })
                    } else {
                        let best = (0..row.len())
                            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                            .unwrap_or(0);
                        json!({ "scores": row, "label": ce.config().id2label[best] })
                    };
                    if args.shard.is_some() {
                        json["line"] = json!(line);
                    }
                    writeln!(out, "{json}").with_context(failed)?;
                }
                for note in &chunk.notes {
                    bar.note(note);
                }
                (pairs, cut) = (pairs + chunk.lines.len(), cut + chunk.cut);
                bar.scored(pairs, chunk.bytes);
                Ok(())
            },
        )?;
        bar.finish();
        if cut > NOTES_SHOWN {
            eprintln!(
                "note: {} more rows with texts over {} bytes, cut likewise",
                cut - NOTES_SHOWN,
                ce.tokenizer().head_bytes()
            );
        }
        out.flush().with_context(failed)
    };
    match &args.output {
        Some(path) => crossenc::model::cross_encoder::replace_file(path, |tmp| {
            let file = std::fs::File::create(tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            let dest = tmp.display().to_string();
            write(&mut std::io::BufWriter::new(file), &dest)
                .with_context(|| format!("{} is left as it was", path.display()))
        }),
        None => {
            let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
            write(&mut stdout, "standard output")
        }
    }
}

/// Reads the input's rows (the shard's only) and sends their pairs in chunks.
fn read(
    args: &PredictArgs,
    cols: &Columns,
    ce: &crossenc::CrossEncoder,
    send: &mut stream::Send<Chunk>,
) -> Result<()> {
    let (header, names) = (args.header.into(), cols.names());
    let mut rows = match args.shard {
        Some(shard) => Rows::open_shard(&args.input, header, &names, shard)?,
        None => Rows::open(&args.input, header, &names, 0..usize::MAX)?,
    };
    if let Some(note) = &rows.head.note {
        eprintln!("{note}");
    }
    let picker = Picker::new(&rows.head, cols, false)?;
    let cap = ce.tokenizer().head_bytes();
    let mut cut_so_far = 0;
    loop {
        let mut pairs = Vec::with_capacity(stream::CHUNK);
        let mut chunk = Chunk {
            lines: Vec::with_capacity(stream::CHUNK),
            notes: Vec::new(),
            cut: 0,
            bytes: 0,
        };
        while pairs.len() < stream::CHUNK {
            let Some(row) = rows.next() else { break };
            let row = row?;
            let (a, b) = picker.pair(&rows.head, &row)?;
            // Scored on its first max-length tokens, from a prefix of it (as every longer text is).
            let longest = a.len().max(b.len());
            if longest > cap {
                if cut_so_far < NOTES_SHOWN {
                    chunk.notes.push(format!(
                        "note: {} line {}: a text of {longest} bytes, scored on its first {} tokens (the max length) from a prefix of it",
                        rows.head.source, row.line, ce.tokenizer().max_length
                    ));
                }
                (cut_so_far, chunk.cut) = (cut_so_far + 1, chunk.cut + 1);
            }
            pairs.push((a, b));
            chunk.lines.push(row.line);
        }
        if pairs.is_empty() {
            return Ok(());
        }
        chunk.bytes = rows.bytes_read();
        if !send(pairs, chunk) {
            return Ok(());
        }
    }
}
