//! The learning-rate schedule of the original code: linear warmup times linear decay to zero,
//! `lr(t) = peak · (1 − t/T) · min(1, t/warmup)`.

/// The learning rate at step `t` of `total`.
pub fn learning_rate(peak: f32, t: u64, warmup: u64, total: u64) -> f32 {
    let decay = 1.0 - (t.min(total) as f64) / (total.max(1) as f64);
    let warm = if warmup == 0 {
        1.0
    } else {
        (t as f64 / warmup as f64).min(1.0)
    };
    (peak as f64 * decay * warm) as f32
}

#[cfg(test)]
mod tests {
    use super::learning_rate;

    #[test]
    fn warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate(1e-3, 0, 10, 100), 0.0);
        assert!((learning_rate(1e-3, 5, 10, 100) - 1e-3 * 0.95 * 0.5).abs() < 1e-9);
        assert!((learning_rate(1e-3, 10, 10, 100) - 1e-3 * 0.9).abs() < 1e-9);
        assert!((learning_rate(1e-3, 50, 10, 100) - 5e-4).abs() < 1e-9);
        assert_eq!(learning_rate(1e-3, 100, 10, 100), 0.0);
        assert!((learning_rate(1e-3, 7, 0, 100) - 1e-3 * 0.93).abs() < 1e-9);
    }
}
