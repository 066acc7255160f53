//! Learning-rate schedule: linear warm-up from 0, then linear decay to 0
//! (transformers' `get_linear_schedule_with_warmup`).

#[derive(Debug, Clone, Copy)]
pub struct LinearSchedule {
    pub peak: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LinearSchedule {
    /// The rate of the optimizer step `step` (0-based): 0 at the first step when warming up,
    /// as the reference's scheduler gives.
    pub fn lr(&self, step: usize) -> f64 {
        let factor = if step < self.warmup_steps {
            step as f64 / self.warmup_steps.max(1) as f64
        } else {
            let left = self.total_steps.saturating_sub(step) as f64;
            (left / self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64).max(0.0)
        };
        self.peak * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warms_up_then_decays_to_zero() {
        let s = LinearSchedule {
            peak: 1.0,
            warmup_steps: 4,
            total_steps: 12,
        };
        let lrs: Vec<f64> = (0..=12).map(|i| s.lr(i)).collect();
        assert_eq!(&lrs[..5], &[0.0, 0.25, 0.5, 0.75, 1.0]);
        assert_eq!(lrs[8], 0.5);
        assert_eq!(lrs[12], 0.0);
        let no_warmup = LinearSchedule {
            peak: 2.0,
            warmup_steps: 0,
            total_steps: 4,
        };
        assert_eq!(no_warmup.lr(0), 2.0);
        assert_eq!(no_warmup.lr(2), 1.0);
    }
}
