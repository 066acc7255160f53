//! Retrieval data in BEIR's layout: `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`.

use anyhow::{bail, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

use crate::data::{read_lines, read_text};

/// A corpus document; models read `title + " " + text`, as BEIR feeds them.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The corpus id (`_id`).
    pub id: String,
    /// 1-based line of the corpus file it was read from.
    pub line: usize,
    /// The title (may be empty).
    pub title: String,
    /// The body.
    pub text: String,
}

impl Doc {
    /// The text a model reads: title and body, as BEIR joins them.
    pub fn full_text(&self) -> String {
        if self.title.is_empty() {
            self.text.clone()
        } else {
            format!("{} {}", self.title, self.text)
        }
    }
}

/// A query with its judged documents (indices into the corpus) and their relevance grades.
#[derive(Debug, Clone)]
pub struct Query {
    /// The query id (`_id`).
    pub id: String,
    /// The query's text.
    pub text: String,
    /// Indices into the corpus of the judged documents, with their relevance.
    pub relevant: HashMap<usize, u32>,
}

/// One split of a BEIR dataset: the whole corpus and the queries that split judges.
pub struct Beir {
    /// The corpus.
    pub docs: Vec<Doc>,
    /// The queries with at least one judged document in the split.
    pub queries: Vec<Query>,
}

/// Documents from JSONL (`text`, optional `_id`/`id` and `title`: BEIR's corpus.jsonl) or plain
/// text, one document per line (its id: the line number). Blank lines are skipped.
pub fn read_corpus(path: &str) -> Result<Vec<Doc>> {
    corpus(path)?.collect()
}

/// [`read_corpus`]'s documents as they are read.
pub fn corpus(path: &str) -> Result<impl Iterator<Item = Result<Doc>>> {
    let mut lines =
        read_lines(path)?.filter(|l| l.as_ref().map_or(true, |(_, l)| !l.trim().is_empty()));
    let Some(first) = lines.next() else {
        bail!("{path}: no documents");
    };
    let first = first?;
    let jsonl = first.1.trim_start().starts_with('{');
    let path = path.to_string();
    Ok(std::iter::once(Ok(first)).chain(lines).map(move |l| {
        let (n, l) = l?;
        if !jsonl {
            return Ok(Doc {
                id: n.to_string(),
                line: n,
                title: String::new(),
                text: l,
            });
        }
        let v = parse_line(&path, n, &l)?;
        Ok(Doc {
            id: id_field(&v).unwrap_or_else(|| n.to_string()),
            line: n,
            title: v
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            text: text_field(&path, n, &v)?,
        })
    }))
}

fn parse_line(path: &str, n: usize, line: &str) -> Result<Value> {
    serde_json::from_str(line).with_context(|| format!("{path} line {n}: invalid JSON"))
}

fn id_field(v: &Value) -> Option<String> {
    match v.get("_id").or_else(|| v.get("id"))? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn text_field(path: &str, n: usize, v: &Value) -> Result<String> {
    v.get("text")
        .and_then(Value::as_str)
        .map(str::to_string)
        .with_context(|| format!("{path} line {n}: no \"text\" field"))
}

/// Reads `dir/corpus.jsonl`, `dir/queries.jsonl` and `dir/qrels/<split>.tsv`; keeps the queries
/// the split judges, in qrels order. Every reference to an unknown id is an error naming the line.
pub fn read_beir(dir: &Path, split: &str) -> Result<Beir> {
    let corpus_path = dir.join("corpus.jsonl");
    let docs = read_corpus(&corpus_path.to_string_lossy())?;
    // qrels name documents by id: two documents of one id would split its judgments.
    let mut doc_index: HashMap<&str, usize> = HashMap::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        if let Some(first) = doc_index.insert(d.id.as_str(), i) {
            bail!(
                "{} line {}: document id \"{}\" is already the id of line {}: ids must be unique",
                corpus_path.display(),
                d.line,
                d.id,
                docs[first].line
            );
        }
    }

    let queries_path = dir.join("queries.jsonl");
    let qp = queries_path.to_string_lossy();
    let mut query_text = HashMap::new();
    for (i, line) in read_text(&qp)?.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = parse_line(&qp, i + 1, line)?;
        let id = id_field(&v).with_context(|| format!("{qp} line {}: no \"_id\" field", i + 1))?;
        if let Some((line, _)) = query_text.insert(id.clone(), (i + 1, text_field(&qp, i + 1, &v)?))
        {
            bail!(
                "{qp} line {}: query id \"{id}\" is already the id of line {line}: ids must be unique",
                i + 1
            );
        }
    }

    let qrels_path = dir.join("qrels").join(format!("{split}.tsv"));
    let rp = qrels_path.to_string_lossy();
    let mut queries: Vec<Query> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for (i, line) in read_text(&rp)?.lines().enumerate() {
        let n = i + 1;
        let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
        if line.trim().is_empty() || (n == 1 && fields.first() == Some(&"query-id")) {
            continue;
        }
        let [qid, did, score] = fields[..] else {
            bail!(
                "{rp} line {n}: expected 3 tab-separated fields (query-id, corpus-id, score), found {}",
                fields.len()
            );
        };
        let score: i64 = score
            .parse()
            .with_context(|| format!("{rp} line {n}: score \"{score}\" is not an integer"))?;
        let doc = *doc_index.get(did).with_context(|| {
            format!(
                "{rp} line {n}: document \"{did}\" is not in {}",
                corpus_path.display()
            )
        })?;
        let q = match position.get(qid) {
            Some(&q) => q,
            None => {
                let (_, text) = query_text
                    .get(qid)
                    .with_context(|| format!("{rp} line {n}: query \"{qid}\" is not in {qp}"))?;
                queries.push(Query {
                    id: qid.to_string(),
                    text: text.clone(),
                    relevant: HashMap::new(),
                });
                position.insert(qid.to_string(), queries.len() - 1);
                queries.len() - 1
            }
        };
        if score > 0 {
            queries[q].relevant.insert(doc, score as u32);
        }
    }
    if queries.is_empty() {
        bail!("{rp}: no judged queries");
    }
    Ok(Beir { docs, queries })
}
