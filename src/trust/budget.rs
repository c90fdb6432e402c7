//! The error budget (`cache.max_wrong_rate`): moves one model's and namespace's threshold
//! up while its estimated wrong-hit rate is over the budget, and back down (never below the
//! configured threshold) while even the interval's upper bound is far under it. Each move is
//! at most `step`, at most once per `adjust_interval_secs`, in the spirit of vCache
//! (thresholds learned online under an error bound).

use super::estimate::{Estimate, Window};
use crate::config::TrustConfig;

/// "Far below" the budget: the upper bound under this share of it.
const FAR_BELOW: f64 = 0.5;

/// A change of threshold and the evidence for it (logged, and kept for `/admin/stats`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Change {
    pub at_ms: u64,
    #[serde(serialize_with = "four_places")]
    pub from: f32,
    #[serde(serialize_with = "four_places")]
    pub to: f32,
    /// The estimate at `from` that moved it.
    pub evidence: Estimate,
}

/// A threshold as people write it (0.95, not 0.949999988079071).
fn four_places<S: serde::Serializer>(value: &f32, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((f64::from(*value) * 1e4).round() / 1e4)
}

/// The learned threshold of one model and namespace.
#[derive(Debug, Default)]
pub struct Learned {
    /// `None` until the budget first moves it: the configured threshold stands.
    pub threshold: Option<f32>,
    pub last: Option<Change>,
    pub changes: u64,
}

impl Learned {
    /// The threshold in force: the learned one, never below `configured`.
    pub fn effective(&self, configured: f32) -> f32 {
        self.threshold.map_or(configured, |t| t.max(configured))
    }

    /// Moves the threshold if the window's evidence asks for it; returns the change.
    pub fn adjust(
        &mut self,
        window: &Window,
        configured: f32,
        budget: f64,
        config: &TrustConfig,
        now_ms: u64,
    ) -> Option<Change> {
        if budget <= 0.0 {
            return None;
        }
        let current = self.effective(configured);
        let evidence = window.at(current);
        if evidence.samples < config.min_samples as u64 {
            return None;
        }
        let rested = self.last.as_ref().is_none_or(|last| {
            now_ms.saturating_sub(last.at_ms) >= config.adjust_interval_secs * 1000
        });
        if !rested {
            return None;
        }
        let over = if config.raise_on_upper_bound {
            evidence.upper > budget
        } else {
            evidence.rate > budget
        };
        let ceiling = config.max_threshold.max(configured);
        let lower = (current - config.step).max(configured);
        let to = if over && current < ceiling {
            (current + config.step).min(ceiling)
        } else if current > configured
            // The hits the lower threshold would serve again were judged when it last stood
            // there: they too must be far under the budget.
            && window.at(lower).upper < budget * FAR_BELOW
        {
            lower
        } else {
            return None;
        };
        let change = Change {
            at_ms: now_ms,
            from: current,
            to,
            evidence,
        };
        self.threshold = Some(to);
        self.last = Some(change.clone());
        self.changes += 1;
        Some(change)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::estimate::Sample;

    fn config() -> TrustConfig {
        TrustConfig {
            min_samples: 10,
            adjust_interval_secs: 60,
            ..TrustConfig::default()
        }
    }

    fn window(samples: &[(f32, bool)]) -> Window {
        let mut w = Window::default();
        for &(similarity, wrong) in samples {
            w.push(Sample { similarity, wrong }, 1000);
        }
        w
    }

    #[test]
    fn raises_one_step_when_over_budget_then_rests() {
        let w = window(&[(0.92, true); 20]);
        let mut learned = Learned::default();
        let change = learned.adjust(&w, 0.9, 0.02, &config(), 1_000).unwrap();
        assert_eq!(change.from, 0.9);
        assert!((change.to - 0.91).abs() < 1e-6, "{}", change.to);
        assert_eq!(change.evidence.samples, 20);
        // Within the interval nothing moves, whatever the evidence.
        assert!(learned.adjust(&w, 0.9, 0.02, &config(), 30_000).is_none());
        let again = learned.adjust(&w, 0.9, 0.02, &config(), 61_000).unwrap();
        assert!((again.to - 0.92).abs() < 1e-6);
    }

    #[test]
    fn holds_without_enough_samples_or_budget() {
        let w = window(&[(0.92, true); 5]);
        assert!(
            Learned::default()
                .adjust(&w, 0.9, 0.02, &config(), 0)
                .is_none()
        );
        let w = window(&[(0.92, true); 50]);
        assert!(
            Learned::default()
                .adjust(&w, 0.9, 0.0, &config(), 0)
                .is_none()
        );
    }

    #[test]
    fn lowers_only_far_below_and_never_under_the_configured_floor() {
        let mut learned = Learned {
            threshold: Some(0.905),
            ..Learned::default()
        };
        // 400 right hits: upper bound ~0.0095, under half of 0.05.
        let w = window(&[(0.95, false); 400]);
        let change = learned.adjust(&w, 0.9, 0.05, &config(), 0).unwrap();
        assert_eq!(change.to, 0.9);
        assert!(learned.adjust(&w, 0.9, 0.05, &config(), 120_000).is_none());
    }

    #[test]
    fn does_not_lower_into_a_band_that_was_judged_wrong() {
        let mut learned = Learned {
            threshold: Some(0.92),
            ..Learned::default()
        };
        // Right at 0.95 (plenty), wrong at 0.915: the band a step down.
        let mut samples = vec![(0.95, false); 400];
        samples.extend([(0.915, true); 5]);
        let w = window(&samples);
        assert!(learned.adjust(&w, 0.9, 0.05, &config(), 0).is_none());
    }

    #[test]
    fn the_upper_bound_rule_is_stricter() {
        // 1 wrong of 40: estimate 2.5%, upper bound ~13%.
        let mut samples = vec![(0.95, false); 39];
        samples.push((0.95, true));
        let w = window(&samples);
        let lenient = Learned::default().adjust(&w, 0.9, 0.05, &config(), 0);
        assert!(lenient.is_none());
        let strict = TrustConfig {
            raise_on_upper_bound: true,
            ..config()
        };
        assert!(
            Learned::default()
                .adjust(&w, 0.9, 0.05, &strict, 0)
                .is_some()
        );
    }
}
