//! The arithmetic of the figures: a sample's median, min and max, and two
//! sides measured alternately with the ratio of each pair.

use std::time::Duration;

/// Median, min, max of a sample.
#[derive(Clone, Copy, Debug)]
pub struct Stat {
    pub med: f64,
    pub min: f64,
    pub max: f64,
}

impl Stat {
    pub fn of(mut v: Vec<f64>) -> Self {
        assert!(!v.is_empty());
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let med = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Self {
            med,
            min: v[0],
            max: v[n - 1],
        }
    }

    /// `k / x` of each figure (a rate into a time, or back): the min and
    /// max swap.
    pub fn inverse(&self, k: f64) -> Self {
        Self {
            med: k / self.med,
            min: k / self.max,
            max: k / self.min,
        }
    }

    pub fn show(&self, unit: &str, prec: usize) -> String {
        format!(
            "{:.p$} {unit} ({:.p$}–{:.p$})",
            self.med,
            self.min,
            self.max,
            p = prec
        )
    }
}

/// One figure measured alternately on two sides (A B, then B A, ...):
/// each side's samples and the ratio of each pair.
pub struct Pair {
    pub a: Stat,
    pub b: Stat,
    /// Median (min, max) of the per-pair ratios a / b.
    pub ratio: Stat,
}

impl Pair {
    pub fn of(a: Vec<f64>, b: Vec<f64>) -> Self {
        let ratio = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        Self {
            a: Stat::of(a),
            b: Stat::of(b),
            ratio: Stat::of(ratio),
        }
    }

    /// The same with the ratio b / a (a time ratio from two rates).
    pub fn inverse_ratio(a: Vec<f64>, b: Vec<f64>) -> Self {
        let ratio = a.iter().zip(&b).map(|(x, y)| y / x).collect();
        Self {
            a: Stat::of(a),
            b: Stat::of(b),
            ratio: Stat::of(ratio),
        }
    }
}

/// Milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_min_max() {
        let s = Stat::of(vec![3.0, 1.0, 2.0]);
        assert_eq!((s.med, s.min, s.max), (2.0, 1.0, 3.0));
        let s = Stat::of(vec![4.0, 1.0, 2.0, 3.0]);
        assert_eq!((s.med, s.min, s.max), (2.5, 1.0, 4.0));
    }

    #[test]
    fn inverse_swaps_the_bounds() {
        let t = Stat::of(vec![100.0, 200.0, 400.0]).inverse(1000.0);
        assert_eq!((t.med, t.min, t.max), (5.0, 2.5, 10.0));
    }

    #[test]
    fn pair_ratios() {
        let p = Pair::of(vec![2.0, 3.0], vec![1.0, 1.0]);
        assert_eq!(p.ratio.med, 2.5);
        let p = Pair::inverse_ratio(vec![2.0, 4.0], vec![1.0, 1.0]);
        assert_eq!((p.ratio.min, p.ratio.max), (0.25, 0.5));
    }
}
