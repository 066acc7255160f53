//! Pearson and Spearman correlation, as scipy computes them (Spearman with average ranks for ties).

/// Pearson's r; 0 when either side is constant (scipy returns NaN there, which helps nobody
/// choosing a best checkpoint).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len(), "pearson: length mismatch");
    let n = x.len() as f64;
    if x.is_empty() {
        return 0.0;
    }
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        let (dx, dy) = (a - mx, b - my);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    if sxx == 0.0 || syy == 0.0 {
        return 0.0;
    }
    sxy / (sxx.sqrt() * syy.sqrt())
}

/// 1-based ranks; tied values share the average of the ranks they span.
pub fn average_ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut ranks = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            ranks[k] = avg;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's rho: Pearson's r of the average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_get_average_ranks() {
        assert_eq!(
            average_ranks(&[10.0, 20.0, 10.0, 30.0, 20.0]),
            vec![1.5, 3.5, 1.5, 5.0, 3.5]
        );
    }

    #[test]
    fn matches_hand_computed_values() {
        // Hand-computed: x = [1,2,3,4,5], y = [2,4,5,4,5]; mean y 4, sxy 6, sxx 10, syy 6.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0];
        let y = [2.0, 4.0, 5.0, 4.0, 5.0];
        assert!((pearson(&x, &y) - 6.0 / (10f64.sqrt() * 6f64.sqrt())).abs() < 1e-12);
        // Ranks of y: [1, 2.5, 4.5, 2.5, 4.5]; mean 3, sxy 7, sxx 10, syy 9.
        assert!((spearman(&x, &y) - 7.0 / (10f64.sqrt() * 3.0)).abs() < 1e-12);
        // Monotone but not linear: Spearman 1, Pearson below 1.
        let z = [1.0, 8.0, 27.0, 64.0, 125.0];
        assert!((spearman(&x, &z) - 1.0).abs() < 1e-12);
        assert!(pearson(&x, &z) < 0.99);
        assert!((spearman(&x, &[5.0, 4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn constant_input_gives_zero() {
        assert_eq!(pearson(&[1.0, 2.0, 3.0], &[4.0, 4.0, 4.0]), 0.0);
    }
}
