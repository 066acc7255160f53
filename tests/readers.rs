//! Every reader, fed random rows and random bytes, returns rows or an error that names the
//! file; none panics.

use crossenc::data::{self, Columns, HeaderMode, Table};
use rand::{Rng, SeedableRng};

/// A random field: text, numbers, quotes, separators, line ends, unicode, or nothing.
fn field(rng: &mut impl Rng) -> String {
    let pieces = [
        "a cat", "0.5", "-3", "1e309", "NaN", "\"", "\"\"", ",", "\t", "\r\n", "\n", "é", "🙂", "",
        " ", "{", "}", "[1]", "null", "\u{feff}",
    ];
    (0..rng.random_range(0..4))
        .map(|_| pieces[rng.random_range(0..pieces.len())])
        .collect()
}

#[test]
fn random_rows_and_bytes_never_panic_a_reader() {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..300 {
        let ext = ["csv", "tsv", "jsonl", "txt"][i % 4];
        let path = tmp.path().join(format!("f{i}.{ext}"));
        let body: Vec<u8> = if rng.random_bool(0.2) {
            (0..rng.random_range(0..200))
                .map(|_| rng.random())
                .collect()
        } else {
            let sep = if ext == "tsv" { "\t" } else { "," };
            (0..rng.random_range(0..8))
                .map(|_| {
                    let n = rng.random_range(0..5);
                    let fields: Vec<String> = (0..n).map(|_| field(&mut rng)).collect();
                    if ext == "jsonl" && rng.random_bool(0.7) {
                        serde_json::json!({"a": fields.first(), "b": fields.get(1), "label": fields.get(2)})
                            .to_string()
                    } else {
                        fields.join(sep)
                    }
                })
                .collect::<Vec<_>>()
                .join(if rng.random_bool(0.5) { "\n" } else { "\r\n" })
                .into_bytes()
        };
        std::fs::write(&path, &body).unwrap();
        let p = path.to_str().unwrap();
        let header = [HeaderMode::Auto, HeaderMode::Yes, HeaderMode::No][i % 3];
        let named = |e: anyhow::Error| {
            let msg = format!("{e:#}");
            assert!(
                msg.contains(&format!("f{i}.{ext}")),
                "error without the file: {msg}"
            );
        };
        match Table::read(p, header, &[]) {
            Ok(table) => {
                let cols = Columns::default();
                for skip in [false, true] {
                    if let Err(e) = data::read_examples(&table, &cols, skip) {
                        named(e);
                    }
                }
                if let Err(e) = data::read_pairs(&table, &cols) {
                    named(e);
                }
            }
            Err(e) => named(e),
        }
    }
}
