//! Faults that the tests inject through `CROSSENC_FAULT`: a rank of a data-parallel run that
//! dies (`kill-rank-1`) or hangs (`hang-rank-1`) at its second step, and a server's inference
//! thread that panics on its first batch (`inference-panic`). Only debug builds (the tests'
//! binary) read the variable; in a release build the check is a constant `false`.

/// Whether the tests asked for fault `name`.
pub(crate) fn injected(name: &str) -> bool {
    cfg!(debug_assertions) && std::env::var("CROSSENC_FAULT").is_ok_and(|v| v == name)
}
