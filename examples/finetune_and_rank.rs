//! Fine-tunes a cross-encoder and ranks documents with it, through the library alone (no CLI):
//! the tutorial's job in a few lines. Trains on the first 2,000 pairs of the bundled STS-B, so it
//! ends in well under a minute on 2 cores.
//!
//!     scripts/fetch-fixtures.sh
//!     cargo run --release --example finetune_and_rank -- target/fixtures/all-MiniLM-L6-v2 /tmp/ce
//!
//! Builds without the CLI's dependencies too (`--no-default-features`).

use anyhow::{Context, Result};
use crossenc::data::{self, bundled, Columns, HeaderMode, Table};
use crossenc::eval::{self, Task};
use crossenc::progress::Lines;
use crossenc::train::{self, OutputMode, TrainConfig};
use crossenc::{CrossEncoder, LoadOptions};
use std::sync::Arc;

/// A split of the bundled STS-B, scores scaled from 0-5 to [0, 1].
fn stsb(split: &str, n: usize) -> Result<Vec<data::Example>> {
    let table = Table::read_source(bundled::STSB, split, HeaderMode::No, &[])?;
    let (mut examples, _) = data::read_examples(&table, &Columns::default(), false)?;
    examples.truncate(n);
    examples.iter_mut().for_each(|e| e.label /= 5.0);
    Ok(examples)
}

fn main() -> Result<()> {
    crossenc::engine::run(work)
}

fn work() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let base = args
        .next()
        .context("usage: finetune_and_rank BASE_MODEL OUTPUT_DIR")?;
    let output = args
        .next()
        .context("usage: finetune_and_rank BASE_MODEL OUTPUT_DIR")?;

    // A bare encoder gets a new one-output head.
    let opts = LoadOptions {
        labels: Some(vec!["LABEL_0".into()]),
        ..Default::default()
    };
    let mut ce = CrossEncoder::load(&base, &opts)?;
    let (train_set, dev) = (stsb("train", 2000)?, stsb("validation", 200)?);
    // Training keeps the pairs' token ids, not their texts.
    let train_set = train::TrainData::new(ce.tokenizer(), &train_set)?;
    let cfg = TrainConfig {
        epochs: 1,
        batch_size: 16,
        lr: 8e-5,
        progress: Arc::new(Lines),
        ..Default::default()
    };
    let std_out = std::path::Path::new(&output);
    train::train(
        &mut ce,
        &train_set,
        Some(&dev),
        &cfg,
        std_out,
        OutputMode::Overwrite,
    )?;

    // The saved folder loads like any HF model.
    let ce = CrossEncoder::from_pretrained(&output)?;
    let test = stsb("test", 500)?;
    let metrics = eval::pair_metrics(&ce, Task::Regression, &test)?;
    println!("STS-B test (500 pairs): {}", eval::format(&metrics));

    let query = "A man is playing a guitar.";
    let docs = [
        "A woman is slicing an onion.",
        "A man plays the guitar on stage.",
        "Someone is playing an instrument.",
    ];
    for (i, score) in ce.rank(query, &docs, None)? {
        println!("{score:.3}  {}", docs[i]);
    }
    Ok(())
}
