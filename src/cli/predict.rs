use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;
use std::io::Write;

use super::ModelArgs;
use crate::data::{self, Columns, HeaderMode, Shard, Table};

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
    let (header, names) = (args.header.into(), cols.names());
    let table = match args.shard {
        Some(shard) => Table::read_shard(&args.input, header, &names, shard)?,
        None => Table::read(&args.input, header, &names)?,
    };
    if let Some(note) = &table.note {
        eprintln!("{note}");
    }
    let pairs = data::read_pairs(&table, &cols)?;
    let ce = args.model.load()?;
    note_cut_texts(&table, &pairs, &ce.tokenizer);
    let scores = if args.raw {
        ce.logits(&pairs)?
    } else {
        ce.predict(&pairs)?
    };
    let labels = &ce.config.id2label;
    let mut out = Vec::new();
    for (row, input) in scores.rows().zip(&table.rows) {
        let mut line = if row.len() == 1 {
            json!({ "score": row[0] })
        } else {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .unwrap_or(0);
            json!({ "scores": row, "label": labels[best] })
        };
        if args.shard.is_some() {
            line["line"] = json!(input.line);
        }
        writeln!(out, "{line}")?;
    }
    match &args.output {
        Some(path) => crate::model::cross_encoder::write_atomic(path, &out)?,
        None => {
            let mut stdout = std::io::stdout().lock();
            (stdout.write_all(&out).and_then(|()| stdout.flush()))
                .context("cannot write to standard output")?;
        }
    }
    Ok(())
}

/// Names on stderr the rows with a text so long that only a prefix of it is tokenized (it is
/// scored on its first max-length tokens, as every longer text is): the first few, then a count.
fn note_cut_texts(
    table: &Table,
    pairs: &[(String, String)],
    tok: &crate::model::tokenize::PairTokenizer,
) {
    const SHOWN: usize = 5;
    let cap = tok.head_bytes();
    let cut: Vec<(usize, usize)> = table
        .rows
        .iter()
        .zip(pairs)
        .filter_map(|(row, (a, b))| Some((row.line, a.len().max(b.len()))).filter(|p| p.1 > cap))
        .collect();
    for (line, bytes) in cut.iter().take(SHOWN) {
        eprintln!(
            "note: {} line {line}: a text of {bytes} bytes, scored on its first {} tokens (the max length) from a prefix of it",
            table.source, tok.max_length
        );
    }
    if cut.len() > SHOWN {
        eprintln!(
            "note: {} more rows with texts over {cap} bytes, cut likewise",
            cut.len() - SHOWN
        );
    }
}
