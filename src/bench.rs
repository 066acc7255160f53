//! Throughput measurements behind `crossenc bench`: training steps, inference, a matmul peak,
//! and peak memory, on this machine.

use anyhow::Result;
use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::Serialize;
use std::time::Instant;

use crate::data::Example;
use crate::model::config::Config;
use crate::ops::{Pass, Precision};
use crate::train::optim::AdamWConfig;
use crate::train::{epoch_batches, Batching, LossKind, Trainable};
use crate::CrossEncoder;

#[derive(Debug, Clone, Serialize)]
pub struct TrainBench {
    pub steps: usize,
    pub batch_size: usize,
    pub s_per_step: f64,
    pub pairs_per_s: f64,
    /// Real (unpadded) tokens per second.
    pub tokens_per_s: f64,
    /// Tokens a padded batch would hold over real tokens (the engine packs: it computes none
    /// of the padding).
    pub padding_ratio: f64,
    /// Seconds one epoch of the data would take at this rate.
    pub s_per_epoch: f64,
    /// Useful FLOP/s (real tokens only; backward counted as twice the forward).
    pub gflops: f64,
    /// Useful FLOPs of an average step.
    pub flops_per_step: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct InferBench {
    pub pairs: usize,
    pub batch_size: usize,
    pub pairs_per_s: f64,
    pub gflops: f64,
}

/// Forward FLOPs of one sequence of `len` tokens: the dense layers (2 per multiply-add) and the
/// two attention products.
pub fn forward_flops(cfg: &Config, len: usize) -> f64 {
    let (h, i, l, t) = (
        cfg.hidden_size as f64,
        cfg.intermediate_size as f64,
        cfg.num_hidden_layers as f64,
        len as f64,
    );
    l * t * (2.0 * (4.0 * h * h + 2.0 * h * i) + 4.0 * t * h)
}

/// Times `steps` training steps (after one untimed warm-up step) on length-grouped batches.
pub fn train_steps(
    ce: &mut CrossEncoder,
    data: &[Example],
    batch_size: usize,
    steps: usize,
    precision: Precision,
) -> Result<TrainBench> {
    let pairs: Vec<(&str, &str)> = data.iter().map(|e| (e.a.as_str(), e.b.as_str())).collect();
    let sequences = ce.tokenizer.encode_pairs(&pairs)?;
    let lengths: Vec<usize> = (0..sequences.len()).map(|s| sequences.seq_len(s)).collect();
    let batches = epoch_batches(&lengths, batch_size, Batching::Grouped, 42, 0);
    let mut t = Trainable::new(ce, AdamWConfig::default())?;
    ce.model.set_precision(precision)?;
    let (mut real, mut padded, mut flops, mut pairs_done) = (0usize, 0usize, 0f64, 0usize);
    let mut start = Instant::now();
    for (k, idx) in batches.iter().cycle().take(steps + 1).enumerate() {
        if k == 1 {
            crate::ops::profile::take();
            start = Instant::now();
        }
        let labels: Vec<f32> = idx
            .iter()
            .map(|&i| data[i].label.clamp(0.0, 1.0) as f32)
            .collect();
        t.accumulate(
            ce,
            sequences.pack(idx.iter().copied()),
            &labels,
            LossKind::Bce,
            Some(Pass::new(k as u64)),
            1.0,
        )?;
        t.step(ce, 1e-9, 1.0);
        if k >= 1 {
            let lens = idx.iter().map(|&i| lengths[i]);
            real += lens.clone().sum::<usize>();
            padded += lens.clone().max().unwrap_or(0) * idx.len();
            flops += lens
                .map(|l| 3.0 * forward_flops(&ce.config, l))
                .sum::<f64>();
            pairs_done += idx.len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(TrainBench {
        steps,
        batch_size,
        s_per_step: secs / steps as f64,
        pairs_per_s: pairs_done as f64 / secs,
        tokens_per_s: real as f64 / secs,
        padding_ratio: padded as f64 / real.max(1) as f64,
        s_per_epoch: data.len() as f64 / (pairs_done as f64 / secs),
        gflops: flops / secs / 1e9,
        flops_per_step: flops / steps as f64,
    })
}

/// Scores every pair once after a warm-up batch; the best of `repeats` runs.
pub fn inference(ce: &CrossEncoder, data: &[Example], repeats: usize) -> Result<InferBench> {
    let pairs: Vec<(&str, &str)> = data.iter().map(|e| (e.a.as_str(), e.b.as_str())).collect();
    ce.predict(&pairs[..pairs.len().min(ce.batch_size)])?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        ce.predict(&pairs)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    // Useful FLOPs: the engine packs batches, so each pair costs its own length.
    let sequences = ce.tokenizer.encode_pairs(&pairs)?;
    let flops: f64 = (0..sequences.len())
        .map(|s| forward_flops(&ce.config, sequences.seq_len(s)))
        .sum();
    Ok(InferBench {
        pairs: pairs.len(),
        batch_size: ce.batch_size,
        pairs_per_s: pairs.len() as f64 / best,
        gflops: flops / best / 1e9,
    })
}

/// GFLOP/s of the engine's linear layers on this machine: the best of 20 runs of the FFN's two
/// products (`[rows, h] x [h, i]` from `[out, in]` weights, `[rows, i] x [i, h]` from `[in,
/// out]`, as the engine stores them), laid out for the kernel as a scoring model's are, in
/// `precision` (`None` for bf16 where the CPU has no bf16 kernel).
pub fn matmul_peak(rows: usize, h: usize, i: usize, precision: Precision) -> Option<f64> {
    use crate::ops::bf16::{available, Bf16Weight};
    use crate::ops::linear::{forward, panels, Products, WeightLayout};
    use crate::ops::matmul::own_kernel;
    let bf16 = precision == Precision::Bf16;
    if bf16 && !available() {
        return None;
    }
    let mut best = f64::INFINITY;
    for (k, n, layout) in [(h, i, WeightLayout::OutIn), (i, h, WeightLayout::InOut)] {
        let x = vec![0.5f32; rows * k];
        let w = vec![0.25f32; n * k];
        let mut y = vec![0f32; rows * n];
        let panels = (own_kernel() && !bf16).then(|| panels(&w, k, layout));
        let reduced = bf16.then(|| Bf16Weight::new(&w, k, layout));
        let mut run = || match &reduced {
            Some(r) => r.forward(&mut y, &x, None),
            None => forward(
                &mut y,
                &x,
                &w,
                None,
                k,
                layout,
                Products::F32(panels.as_ref()),
            ),
        };
        run();
        for _ in 0..20 {
            let start = Instant::now();
            run();
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    Some(2.0 * (rows * h * i) as f64 / best / 1e9)
}

/// Memory bandwidth in GB/s: a parallel copy of 256 MB (bytes read plus bytes written), best
/// of 5 after one warm-up.
pub fn memory_bandwidth() -> f64 {
    const N: usize = 64 << 20;
    let src = vec![1f32; N];
    let mut dst = vec![0f32; N];
    let mut best = f64::INFINITY;
    for i in 0..6 {
        let start = Instant::now();
        dst.par_chunks_mut(1 << 16)
            .zip(src.par_chunks(1 << 16))
            .for_each(|(d, s)| d.copy_from_slice(s));
        if i > 0 {
            best = best.min(start.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(&dst);
    2.0 * (N * 4) as f64 / best / 1e9
}

/// Bytes of memory traffic per parameter per training step that no engine avoids: AdamW
/// reads and writes the weight and both moments and reads the gradient (28), and the gradient
/// is cleared (4).
pub const STEP_BYTES_PER_PARAM: f64 = 32.0;

/// A training step's floor in seconds: its useful FLOPs at the matmul peak plus its
/// unavoidable memory traffic at the measured bandwidth.
pub fn step_floor(flops: f64, params: usize, peak_gflops: f64, bandwidth_gbs: f64) -> f64 {
    flops / (peak_gflops * 1e9) + STEP_BYTES_PER_PARAM * params as f64 / (bandwidth_gbs * 1e9)
}

/// Peak resident memory of this process in MB (Linux `VmHWM`).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

/// The tutorial's own figure: seconds per training step of 16 pairs with bert-base on its CPU.
pub const TUTORIAL_BERT_BASE_S_PER_STEP: f64 = 5.52;

/// The tutorial's model size: bert-base (12 layers, hidden 768, 12 heads, intermediate 3072).
pub const BERT_BASE: (usize, usize, usize, usize) = (12, 768, 12, 3072);

/// `template` resized to `(layers, hidden, heads, intermediate)` with random weights (normal,
/// std `initializer_range`; LayerNorm weights 1, biases 0): for timing a model size with no
/// checkpoint at hand. Names come from `template`'s layer 0, so any supported family works.
pub fn resized(
    template: &CrossEncoder,
    size: (usize, usize, usize, usize),
) -> Result<CrossEncoder> {
    use rand::{rngs::StdRng, SeedableRng};
    use rand_distr::{Distribution, Normal};
    let (layers, hidden, heads, inter) = size;
    let old = &template.config;
    let resize = |d: usize| {
        if d == old.hidden_size {
            hidden
        } else if d == old.intermediate_size {
            inter
        } else {
            d
        }
    };
    let mut rng = StdRng::seed_from_u64(0);
    let normal = Normal::new(0.0f32, old.initializer_range as f32)?;
    let mut params = crate::model::checkpoint::Params::default();
    for e in template.model.weights.entries() {
        let name = &e.name;
        let names: Vec<String> = match name.split_once(".layer.0.") {
            Some((pre, post)) => (0..layers)
                .map(|i| format!("{pre}.layer.{i}.{post}"))
                .collect(),
            None if name.contains(".layer.") => continue,
            None => vec![name.clone()],
        };
        let dims: Vec<usize> = e.shape.iter().map(|&d| resize(d)).collect();
        for n in names {
            let value = if n.ends_with(".bias") {
                Tensor::zeros(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?
            } else if n.contains("LayerNorm") || n.contains("layer_norm") {
                Tensor::ones(dims.as_slice(), candle_core::DType::F32, &Device::Cpu)?
            } else {
                let v = (0..dims.iter().product())
                    .map(|_| normal.sample(&mut rng))
                    .collect();
                Tensor::from_vec(v, dims.as_slice(), &Device::Cpu)?
            };
            params.tensors.insert(n, value);
        }
    }
    let mut config = old.clone();
    config.num_hidden_layers = layers;
    config.hidden_size = hidden;
    config.embedding_size = hidden;
    config.num_attention_heads = heads;
    config.intermediate_size = inter;
    CrossEncoder::with_params(template, config, &params)
}
