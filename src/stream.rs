//! Scoring pairs as they are read, in bounded memory: a reader thread, a tokenizer thread and
//! the engine, with a queue of a few chunks between each, so that reading and tokenizing the
//! next chunks overlap scoring this one and memory holds a few chunks whatever the input size.

use crate::Output;
use anyhow::Result;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use crate::model::tokenize::Sequences;
use crate::{CrossEncoder, Scores};

/// Pairs a chunk holds: many batches (scored longest first within it), a few MB of text.
pub const CHUNK: usize = 4096;

/// Chunks waiting between two stages.
const QUEUE: usize = 2;

/// Hands chunks of pairs, each with what the caller keeps beside it (`M`: line numbers,
/// labels, ids), to the pipeline; returns false once the pipeline has stopped (an error
/// downstream), when reading should stop too.
pub type Send<'a, M> = dyn FnMut(Vec<(String, String)>, M) -> bool + 'a;

/// A chunk of pairs read, with the caller's `M`.
type Read<M> = Result<(Vec<(String, String)>, M)>;

/// Scores the chunks `read` sends, in order: `write` gets each chunk's `M` and scores
/// (as `output` says) as soon as they are ready. `read` runs on its own thread, and
/// opens its input there (so it need not be `Send`); its error, a tokenizer's or `write`'s
/// stops the run and is returned.
pub fn score<M: std::marker::Send>(
    ce: &CrossEncoder,
    read: impl FnOnce(&mut Send<M>) -> Result<()> + std::marker::Send,
    output: Output,
    mut write: impl FnMut(M, Scores) -> Result<()>,
) -> Result<()> {
    let (pairs_tx, pairs_rx) = sync_channel::<Read<M>>(QUEUE);
    let (tokens_tx, tokens_rx) = sync_channel::<Result<(Sequences, M)>>(QUEUE);
    std::thread::scope(|s| {
        s.spawn(move || {
            let tx = pairs_tx.clone();
            let mut send = |pairs, meta| tx.send(Ok((pairs, meta))).is_ok();
            if let Err(e) = read(&mut send) {
                let _ = pairs_tx.send(Err(e));
            }
        });
        s.spawn(move || tokenize(ce, pairs_rx, tokens_tx));
        // On an error here the receiver is dropped: the stages' sends fail and they end.
        for chunk in tokens_rx {
            let (sequences, meta) = chunk?;
            write(meta, ce.score_sequences(&sequences, output)?)?;
        }
        Ok(())
    })
}

fn tokenize<M>(ce: &CrossEncoder, rx: Receiver<Read<M>>, tx: SyncSender<Result<(Sequences, M)>>) {
    for chunk in rx {
        let tokenized = chunk.and_then(|(pairs, meta)| {
            let sequences = ce.tokenizer.encode_pairs(&pairs)?;
            Ok((sequences, meta))
        });
        let failed = tokenized.is_err();
        if tx.send(tokenized).is_err() || failed {
            return;
        }
    }
}
