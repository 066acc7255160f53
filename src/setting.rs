//! The settings that messages tell the user to change, named as the program in front of the
//! library names them: its own field names by default, flags in the CLI (`--max-length`), keyword
//! arguments in Python. The library's errors say `lower {}` with a [`Setting`], and the front
//! end chooses the words once, with [`name_settings`].

use std::sync::OnceLock;

/// A setting that a message points to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Setting {
    Model,
    MaxLength,
    Quantize,
    Precision,
    NumLabels,
    Output,
    Overwrite,
    Resume,
    SaveSteps,
    RankTimeout,
    LabelRange,
    Loss,
    Metric,
    Task,
    Labels,
    Lr,
    SkipBadRows,
    Header,
    TextColumns,
    LabelColumn,
}

impl Setting {
    /// The library's name for it: the field (or value) that sets it.
    pub fn library_name(self) -> &'static str {
        match self {
            Setting::Model => "`Job::model`",
            Setting::MaxLength => "`max_length`",
            Setting::Quantize => "`LoadOptions::quantize`",
            Setting::Precision => "`TrainConfig::precision`",
            Setting::NumLabels => "the number of labels",
            Setting::Output => "`Job::output`",
            Setting::Overwrite => "`OutputMode::Overwrite`",
            Setting::Resume => "`OutputMode::Resume`",
            Setting::SaveSteps => "`TrainConfig::save_steps`",
            Setting::RankTimeout => "the rank timeout",
            Setting::LabelRange => "`ReadOptions::label_range`",
            Setting::Loss => "`TrainConfig::loss`",
            Setting::Metric => "`TrainConfig::metric`",
            Setting::Task => "task",
            Setting::Labels => "the class names",
            Setting::Lr => "`TrainConfig::lr`",
            Setting::SkipBadRows => "`ReadOptions::skip_bad_rows`",
            Setting::Header => "`ReadOptions::header`",
            Setting::TextColumns => "`Columns::texts`",
            Setting::LabelColumn => "`Columns::label`",
        }
    }
}

static NAMES: OnceLock<fn(Setting) -> &'static str> = OnceLock::new();

/// Names every setting in messages by `names` from now on (the CLI: its flags). The first call
/// wins; without one, messages use [`Setting::library_name`].
pub fn name_settings(names: fn(Setting) -> &'static str) {
    let _ = NAMES.set(names);
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let name = NAMES
            .get()
            .map_or_else(|| self.library_name(), |names| names(*self));
        f.write_str(name)
    }
}
