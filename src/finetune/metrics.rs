//! The GLUE metrics: accuracy, F1, Matthews correlation, Pearson and Spearman.

/// Share of predictions equal to the gold class (0 for no example).
pub fn accuracy(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len());
    if pred.is_empty() {
        return 0.0;
    }
    let right = pred.iter().zip(gold).filter(|(p, g)| p == g).count();
    right as f64 / pred.len() as f64
}

/// F1 of class `positive`: 2·TP / (2·TP + FP + FN); 0 when there is no positive at all.
pub fn f1(pred: &[usize], gold: &[usize], positive: usize) -> f64 {
    assert_eq!(pred.len(), gold.len());
    let (mut tp, mut fp, mut fnn) = (0usize, 0usize, 0usize);
    for (&p, &g) in pred.iter().zip(gold) {
        match (p == positive, g == positive) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fnn += 1,
            _ => {}
        }
    }
    let d = 2 * tp + fp + fnn;
    if d == 0 {
        0.0
    } else {
        2.0 * tp as f64 / d as f64
    }
}

/// Matthews correlation over any number of classes (scikit-learn's multiclass form, which is
/// (TP·TN − FP·FN)/√((TP+FP)(TP+FN)(TN+FP)(TN+FN)) for two); 0 when undefined.
pub fn matthews(pred: &[usize], gold: &[usize]) -> f64 {
    assert_eq!(pred.len(), gold.len());
    let k = pred.iter().chain(gold).max().map_or(0, |m| m + 1);
    let (mut p_k, mut t_k) = (vec![0f64; k], vec![0f64; k]);
    let mut correct = 0f64;
    for (&p, &g) in pred.iter().zip(gold) {
        p_k[p] += 1.0;
        t_k[g] += 1.0;
        correct += f64::from(u8::from(p == g));
    }
    let s = pred.len() as f64;
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    let cov = correct * s - dot(&p_k, &t_k);
    let denom = ((s * s - dot(&p_k, &p_k)) * (s * s - dot(&t_k, &t_k))).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        cov / denom
    }
}

/// Pearson's correlation; 0 when either side is constant.
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    assert_eq!(x.len(), y.len());
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
        0.0
    } else {
        sxy / (sxx * syy).sqrt()
    }
}

/// Ranks 1..n, ties sharing the average of their ranks.
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
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &o in &order[i..=j] {
            ranks[o] = rank;
        }
        i = j + 1;
    }
    ranks
}

/// Spearman's correlation: Pearson's over average ranks.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&average_ranks(x), &average_ranks(y))
}
