//! Rotary position embeddings (RoPE) on the queries and keys of a packed batch, forward and
//! backward, as transformers' `apply_rotary_pos_emb` with `rotate_half`: dimension `i` of a head
//! pairs with dimension `i + d/2`, and the pair turns by `position · theta^(-2i/d)`. The backward
//! turns the gradient back by the same angle (a rotation's transpose is its inverse).

use rayon::prelude::*;

use super::attention::Heads;

/// The cosines and sines of every position's angles, `[positions, d/2]` each.
pub struct Rotary {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rotary {
    /// For heads of width `d` (even), base `theta`, positions `0..positions`. The angles are
    /// computed in f32 as transformers computes them, so that long sequences round alike.
    pub fn new(d: usize, theta: f64, positions: usize) -> Self {
        let half = d / 2;
        let inv_freq: Vec<f32> = (0..half)
            .map(|i| 1.0 / (theta as f32).powf((2 * i) as f32 / d as f32))
            .collect();
        let mut cos = Vec::with_capacity(positions * half);
        let mut sin = Vec::with_capacity(positions * half);
        for p in 0..positions {
            for f in &inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Rotary { cos, sin, half }
    }

    /// The most positions the tables hold.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// Rotates the query and key heads of `qkv` (`[tokens, heads.width()]`, heads `2 · half`
    /// wide) in place; each sequence's tokens take positions `0..len`.
    pub fn forward(&self, qkv: &mut [f32], offsets: &[usize], heads: Heads) {
        self.turn(qkv, offsets, heads, 1.0);
    }

    /// dL/d(Q, K) before the rotation from dL/d(Q, K) after it, in place in `dqkv`.
    pub fn backward(&self, dqkv: &mut [f32], offsets: &[usize], heads: Heads) {
        self.turn(dqkv, offsets, heads, -1.0);
    }

    /// Turns every head's pairs by `sign ·` the position's angles.
    fn turn(&self, x: &mut [f32], offsets: &[usize], heads: Heads, sign: f32) {
        let half = self.half;
        let rotated = (heads.q + heads.kv) * heads.d;
        x.par_chunks_mut(heads.width())
            .enumerate()
            .for_each(|(t, row)| {
                // The sequence that holds token t, and t's position in it.
                let s = offsets.partition_point(|&o| o <= t) - 1;
                let p = t - offsets[s];
                let (cos, sin) = (
                    &self.cos[p * half..(p + 1) * half],
                    &self.sin[p * half..(p + 1) * half],
                );
                for head in row[..rotated].chunks_exact_mut(2 * half) {
                    let (x1, x2) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b, c, s) = (x1[i], x2[i], cos[i], sign * sin[i]);
                        x1[i] = a * c - b * s;
                        x2[i] = b * c + a * s;
                    }
                }
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::*;
    use candle_core::{Result, Tensor};

    /// transformers' `q * cos + rotate_half(q) * sin` from candle primitives, on `[n, d]`
    /// rows of one head with positions `pos`.
    fn composed(x: &Tensor, pos: &[usize], d: usize, theta: f64) -> Result<Tensor> {
        let half = d / 2;
        let mut cos = Vec::new();
        let mut sin = Vec::new();
        for &p in pos {
            for k in 0..d {
                let f = 1.0 / (theta as f32).powf((2 * (k % half)) as f32 / d as f32);
                cos.push((p as f32 * f).cos());
                sin.push((p as f32 * f).sin());
            }
        }
        let n = pos.len();
        let cos = Tensor::from_vec(cos, (n, d), x.device())?;
        let sin = Tensor::from_vec(sin, (n, d), x.device())?;
        let rotated = Tensor::cat(
            &[&x.narrow(1, half, half)?.neg()?, &x.narrow(1, 0, half)?],
            1,
        )?;
        x.mul(&cos)? + rotated.mul(&sin)?
    }

    #[test]
    fn matches_transformers_rotation_and_its_gradient() {
        let (h, d, theta) = (8, 4, 10_000.0);
        let offsets = [0, 5, 12];
        let n = 12;
        let qkv = randn(n * 3 * h, 1.0, 1);
        let probe = randn(n * 3 * h, 1.0, 2);
        let rot = Rotary::new(d, theta, 16);
        let mut got = qkv.clone();
        rot.forward(&mut got, &offsets, Heads::new(h, h / d));
        let mut dgot = probe.clone();
        rot.backward(&mut dgot, &offsets, Heads::new(h, h / d));
        let pos: Vec<usize> = (0..5).chain(0..7).collect();
        // Each head of Q and K separately; V passes through untouched.
        for col in (0..2 * h).step_by(d) {
            let column = |v: &[f32]| -> Vec<f32> {
                v.chunks(3 * h)
                    .flat_map(|r| r[col..col + d].to_vec())
                    .collect()
            };
            let xv = var(&column(&qkv), &[n, d]);
            let probe_c = column(&probe);
            let (want, g) = reference(composed(&xv, &pos, d, theta), &probe_c, &[&xv]);
            assert!(max_diff(&column(&got), &want) < 1e-5);
            assert!(rel_diff(&column(&dgot), &g[0]) < 1e-5);
        }
        let v =
            |x: &[f32]| -> Vec<f32> { x.chunks(3 * h).flat_map(|r| r[2 * h..].to_vec()).collect() };
        assert_eq!(v(&got), v(&qkv));
        assert_eq!(v(&dgot), v(&probe));
    }
}
