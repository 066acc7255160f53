use candle_core::Device;
use crossenc::ops::Dropout;
use crossenc::train::{optim::AdamWConfig, Trainable};
use crossenc::{CrossEncoder, LoadOptions};
use std::time::Instant;

fn main() {
    let mut ce = CrossEncoder::load(
        "target/fixtures/all-MiniLM-L6-v2",
        &Device::Cpu,
        &LoadOptions::default(),
    )
    .unwrap();
    let t = Trainable::new(&mut ce, AdamWConfig::default()).unwrap();
    let text =
        "a man is playing a guitar on the street while people walk by and a dog barks loudly";
    let pairs: Vec<(String, String)> = (0..16)
        .map(|i| (format!("{text} {i}"), text.to_string()))
        .collect();
    let enc = ce.tokenizer.encode_pairs(&pairs).unwrap();
    let refs: Vec<_> = enc.iter().collect();
    let batch = ce.tokenizer.batch(&refs);
    println!("tokens per row {}", batch.seq_len);
    for _ in 0..3 {
        let t0 = Instant::now();
        let logits = t.model.forward(&batch, &mut Dropout::off()).unwrap();
        let loss = logits.sqr().unwrap().mean_all().unwrap();
        let t1 = Instant::now();
        let grads = loss.backward().unwrap();
        let t2 = Instant::now();
        let g = t.opt.gradients(&grads).unwrap();
        let t3 = Instant::now();
        let mut drop = Dropout::seeded(rand::SeedableRng::seed_from_u64(1));
        let _ = t.model.forward(&batch, &mut drop).unwrap();
        let t4 = Instant::now();
        let _ = ce.model.forward(&batch, &mut Dropout::off()).unwrap();
        let t5 = Instant::now();
        println!(
            "fwd(tracked) {:?} bwd {:?} grads {:?} fwd+dropout {:?} fwd(infer) {:?} n={}",
            t1 - t0,
            t2 - t1,
            t3 - t2,
            t4 - t3,
            t5 - t4,
            g.len()
        );
    }
}
