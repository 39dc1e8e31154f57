//! Quantiles: of a sample (nearest rank) and of a Prometheus histogram
//! (linear interpolation inside the bucket, as `histogram_quantile` does).

/// p50, p99 and the maximum of a sample, with its size.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Quantiles {
    /// sample size
    pub count: usize,
    /// median
    pub p50: f64,
    /// 99th percentile
    pub p99: f64,
    /// largest value
    pub max: f64,
}

/// The quantiles of `values` (nearest rank); all zero for an empty sample.
pub fn quantiles_of(mut values: Vec<f64>) -> Quantiles {
    if values.is_empty() {
        return Quantiles::default();
    }
    values.sort_by(f64::total_cmp);
    let rank = |q: f64| {
        let index = ((q * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1;
        values[index]
    };
    Quantiles {
        count: values.len(),
        p50: rank(0.5),
        p99: rank(0.99),
        max: values[values.len() - 1],
    }
}

/// The `q` quantile of a histogram given as (upper bound, cumulative count)
/// ascending with `+Inf` last. A quantile in the `+Inf` bucket is the
/// largest finite bound; an empty histogram gives 0.
pub fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let Some(&(_, total)) = buckets.last() else {
        return 0.0;
    };
    if total <= 0.0 {
        return 0.0;
    }
    let target = q * total;
    let mut lower_bound = 0.0;
    let mut lower_count = 0.0;
    for &(bound, count) in buckets {
        if count >= target {
            if bound.is_infinite() {
                return lower_bound;
            }
            let in_bucket = count - lower_count;
            if in_bucket <= 0.0 {
                return bound;
            }
            return lower_bound + (bound - lower_bound) * (target - lower_count) / in_bucket;
        }
        lower_bound = bound;
        lower_count = count;
    }
    lower_bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        let q = quantiles_of(values);
        assert_eq!((q.count, q.p50, q.p99, q.max), (100, 50.0, 99.0, 100.0));
        assert_eq!(quantiles_of(vec![7.0]).p99, 7.0);
        assert_eq!(quantiles_of(Vec::new()), Quantiles::default());
    }

    #[test]
    fn histogram_quantiles_interpolate_inside_the_bucket() {
        // 10 observations up to 1 ms, 10 more up to 2 ms, none above.
        let buckets = [(0.001, 10.0), (0.002, 20.0), (f64::INFINITY, 20.0)];
        assert!((histogram_quantile(0.5, &buckets) - 0.001).abs() < 1e-12);
        assert!((histogram_quantile(0.75, &buckets) - 0.0015).abs() < 1e-12);
        assert!((histogram_quantile(0.25, &buckets) - 0.0005).abs() < 1e-12);
        // Everything above the last finite bound: that bound.
        let high = [(0.001, 0.0), (f64::INFINITY, 5.0)];
        assert_eq!(histogram_quantile(0.99, &high), 0.001);
        assert_eq!(histogram_quantile(0.5, &[]), 0.0);
    }
}
