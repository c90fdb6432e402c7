//! The wrong-hit estimate of one model and namespace: a window of recent judged hits with
//! their similarity, so the estimate at a threshold counts only hits that threshold would
//! still serve; and the Wilson score interval around it.

use std::collections::VecDeque;

/// z of a two-sided 95% interval.
const Z95: f64 = 1.96;

/// One judged hit.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub similarity: f32,
    pub wrong: bool,
}

/// A wrong-hit rate with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub samples: u64,
    pub wrong: u64,
    pub rate: f64,
    pub lower: f64,
    pub upper: f64,
}

impl Estimate {
    pub fn of(wrong: u64, samples: u64) -> Estimate {
        let (lower, upper) = wilson(wrong, samples, Z95);
        let rate = if samples == 0 {
            0.0
        } else {
            wrong as f64 / samples as f64
        };
        Estimate {
            samples,
            wrong,
            rate,
            lower,
            upper,
        }
    }
}

/// The Wilson score interval of `wrong` out of `n` (0..1 when `n` is 0): unlike the normal
/// approximation it stays inside [0, 1] and is honest at 0 wrong out of few.
pub fn wilson(wrong: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = wrong as f64 / n;
    let z2 = z * z;
    let centre = p + z2 / (2.0 * n);
    let spread = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    let denominator = 1.0 + z2 / n;
    (
        ((centre - spread) / denominator).max(0.0),
        ((centre + spread) / denominator).min(1.0),
    )
}

/// The most recent judged hits, oldest first.
#[derive(Debug, Default)]
pub struct Window {
    samples: VecDeque<Sample>,
}

impl Window {
    pub fn push(&mut self, sample: Sample, capacity: usize) {
        while self.samples.len() >= capacity.max(1) {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// The estimate over the hits at or above `threshold`.
    pub fn at(&self, threshold: f32) -> Estimate {
        let (mut n, mut wrong) = (0, 0);
        for sample in self.samples.iter().filter(|s| s.similarity >= threshold) {
            n += 1;
            wrong += u64::from(sample.wrong);
        }
        Estimate::of(wrong, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wilson_matches_the_textbook_values() {
        // 10 of 100: 0.0552..0.1744 (Wilson 1927; e.g. Newcombe 1998, method 3).
        let (lo, hi) = wilson(10, 100, Z95);
        assert!((lo - 0.0552).abs() < 1e-3, "{lo}");
        assert!((hi - 0.1744).abs() < 1e-3, "{hi}");
        // 0 of 30: lower 0, upper 0.1135.
        let (lo, hi) = wilson(0, 30, Z95);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.1135).abs() < 1e-3, "{hi}");
    }

    #[test]
    fn the_estimate_counts_only_hits_the_threshold_still_serves() {
        let mut window = Window::default();
        for i in 0..10 {
            window.push(
                Sample {
                    similarity: 0.90 + i as f32 * 0.01,
                    wrong: i < 5,
                },
                100,
            );
        }
        assert_eq!(window.at(0.0).wrong, 5);
        let high = window.at(0.945);
        assert_eq!((high.samples, high.wrong), (5, 0));
    }

    #[test]
    fn the_window_forgets_the_oldest() {
        let mut window = Window::default();
        for wrong in [true, true, false, false] {
            window.push(
                Sample {
                    similarity: 1.0,
                    wrong,
                },
                2,
            );
        }
        assert_eq!(window.at(0.0).wrong, 0);
        assert_eq!(window.at(0.0).samples, 2);
    }
}
