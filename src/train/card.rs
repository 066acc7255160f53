//! The model card (`README.md`) written beside a fine-tuned model, in the shape of a
//! sentence-transformers card: base model, data, hyperparameters, metrics.

use crate::setting::Setting;
use anyhow::Result;
use std::fmt::Write;
use std::path::Path;

use super::TrainConfig;
use crate::eval::Metrics;

pub struct Card<'a> {
    pub base_model: &'a str,
    pub train_data: &'a str,
    pub train_examples: usize,
    pub dev_data: Option<&'a str>,
    /// `--label-range`, when labels were mapped into [0, 1].
    pub label_range: Option<(f64, f64)>,
    pub config: &'a TrainConfig,
    /// (split name, metrics) to report, e.g. the best dev and the test metrics.
    pub results: Vec<(String, Metrics)>,
    pub seconds: f64,
}

impl Card<'_> {
    pub fn write(&self, output: &Path) -> Result<()> {
        let c = self.config;
        let mut s = String::new();
        let _ = writeln!(s, "---\nlibrary_name: sentence-transformers\npipeline_tag: text-ranking\nbase_model: {}\ntags:\n- cross-encoder\n- crossenc\n---\n", self.base_model);
        let _ = writeln!(s, "# Cross-encoder fine-tuned from {}\n", self.base_model);
        let _ = writeln!(s, "Trained with [crossenc](https://crates.io/crates/crossenc). Load it with sentence-transformers:\n\n```python\nfrom sentence_transformers import CrossEncoder\nmodel = CrossEncoder(\"path/to/this/folder\")\nscores = model.predict([(\"A man is playing a guitar.\", \"A person is playing a guitar.\")])\n```\n");
        let _ = writeln!(
            s,
            "## Training data\n\n- train: `{}` ({} pairs)",
            self.train_data, self.train_examples
        );
        if let Some(dev) = self.dev_data {
            let _ = writeln!(s, "- dev: `{dev}` (model selection by {})", c.metric);
        }
        if let Some((lo, hi)) = self.label_range {
            let _ = writeln!(s, "- labels mapped linearly from [{lo}, {hi}] to [0, 1] (`{} {lo}:{hi}`); scores are in [0, 1]", Setting::LabelRange);
        }
        let warmup = c
            .warmup_steps
            .map_or(format!("ratio {}", c.warmup_ratio), |w| {
                format!("{w} steps")
            });
        let _ = writeln!(
            s,
            "\n## Hyperparameters\n\n| setting | value |\n| --- | --- |\n| task | {:?} |\n| loss | {:?} (pairs per list: {}) |\n| epochs | {} |\n| batch size | {} ({:?} batching) |\n| gradient accumulation | {} |\n| learning rate | {} (linear warm-up {warmup}, then linear decay) |\n| optimizer | AdamW (betas {}/{}, eps {}, weight decay {} except biases and LayerNorm) |\n| max gradient norm | {} |\n| seed | {} |\n| training time | {:.0} s |",
            c.task, c.loss, c.list_size, c.epochs, c.batch_size, c.batching, c.grad_accum, c.lr, c.adamw.beta1, c.adamw.beta2, c.adamw.eps, c.adamw.weight_decay, c.max_grad_norm, c.seed, self.seconds
        );
        if !self.results.is_empty() {
            let _ = writeln!(
                s,
                "\n## Results\n\n| split | metric | value |\n| --- | --- | --- |"
            );
            for (split, m) in &self.results {
                for (k, v) in m {
                    let _ = writeln!(s, "| {split} | {k} | {v:.4} |");
                }
            }
        }
        crate::model::cross_encoder::write_atomic(&output.join("README.md"), s.as_bytes())
    }
}
