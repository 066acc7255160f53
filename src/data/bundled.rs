//! STS-B (English) shipped with crossenc, so that the default training run needs no network:
//! the files of `data/stsb` (see its SOURCE.txt and LICENSE), compiled into the binary. Named
//! `bundled:stsb` wherever a data source is taken; its scores are 0-5 and it has no header.

/// The spec that names the bundled data.
pub const STSB: &str = "bundled:stsb";

/// The file name and text of a split of the bundled STS-B (`train`, `validation` or `dev`,
/// `test`); `None` for another split.
pub fn stsb(split: &str) -> Option<(&'static str, &'static str)> {
    Some(match split {
        "train" => (
            "stsb-en-train.csv",
            include_str!("../../data/stsb/stsb-en-train.csv"),
        ),
        "validation" | "dev" => (
            "stsb-en-dev.csv",
            include_str!("../../data/stsb/stsb-en-dev.csv"),
        ),
        "test" => (
            "stsb-en-test.csv",
            include_str!("../../data/stsb/stsb-en-test.csv"),
        ),
        _ => return None,
    })
}
