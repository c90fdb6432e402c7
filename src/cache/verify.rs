//! A second opinion on semantic candidates. Cosine similarity can't tell "turn on the light"
//! from "turn off the light", or "2+2" from "2+3", and it scores word-swapped sentences
//! almost 1. This check runs only on candidates above the threshold, where it is cheap next to
//! an upstream call. It rejects a candidate whose prompt disagrees with the query on something
//! that changes the answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Which checks run; all are on by default (`[cache.verify]` in `proxy.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyConfig {
    /// Master switch.
    pub enabled: bool,
    /// The numbers in both prompts must be the same (as a multiset).
    pub numbers: bool,
    /// Both prompts must be negated, or neither ("not", "no", "never", "n't", ...).
    pub negation: bool,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            numbers: true,
            negation: true,
        }
    }
}

/// Words that flip a statement or question. Counted by parity, so "not un-" stays cheap to
/// reason about and double negatives cancel.
const NEGATIONS: [&str; 10] = [
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
];

impl VerifyConfig {
    /// Whether a cached answer to `candidate` may answer `query`.
    pub fn accepts(&self, query: &str, candidate: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let (q, c) = (Features::of(query), Features::of(candidate));
        (!self.numbers || q.numbers == c.numbers) && (!self.negation || q.negated == c.negated)
    }
}

/// What the checks compare, extracted once per text.
#[derive(Debug, PartialEq)]
struct Features {
    numbers: BTreeMap<String, usize>,
    negated: bool,
}

impl Features {
    fn of(text: &str) -> Features {
        let lower = without_digit_commas(&text.to_lowercase());
        let mut numbers = BTreeMap::new();
        let mut negations = 0usize;
        for word in lower.split(|c: char| !(c.is_alphanumeric() || c == '.' || c == '\'')) {
            let word = word.trim_matches(|c| c == '.' || c == '\'');
            if word.is_empty() {
                continue;
            }
            if word.chars().any(|c| c.is_ascii_digit()) {
                *numbers.entry(normalize_number(word)).or_default() += 1;
            } else if let Some(value) = number_word(word) {
                *numbers.entry(value.to_string()).or_default() += 1;
            }
            if NEGATIONS.contains(&word) || word.ends_with("n't") {
                negations += 1;
            }
        }
        Features {
            numbers,
            negated: negations % 2 == 1,
        }
    }
}

/// "1,000" is one number, not two: drop commas between digits.
fn without_digit_commas(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    chars
        .iter()
        .enumerate()
        .filter(|&(i, &c)| {
            !(c == ','
                && i > 0
                && chars[i - 1].is_ascii_digit()
                && chars.get(i + 1).is_some_and(char::is_ascii_digit))
        })
        .map(|(_, &c)| c)
        .collect()
}

/// "1000" and "1000.0" are the same number.
fn normalize_number(word: &str) -> String {
    match word.parse::<f64>() {
        Ok(value) if value.is_finite() => format!("{value}"),
        _ => word.to_string(),
    }
}

fn number_word(word: &str) -> Option<u32> {
    const WORDS: [&str; 13] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    WORDS.iter().position(|w| *w == word).map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(a: &str, b: &str) -> bool {
        VerifyConfig::default().accepts(a, b)
    }

    #[test]
    fn numbers_must_agree() {
        assert!(!accepts("What is 2+2?", "What is 2+3?"));
        assert!(!accepts("Top 5 movies of 2023", "Top 10 movies of 2023"));
        assert!(!accepts("a list of three fruits", "a list of four fruits"));
        assert!(accepts("What is 1,000 times 3?", "what's 1000 times 3"));
        assert!(accepts("give me three fruits", "name 3 fruits"));
    }

    #[test]
    fn negation_must_agree() {
        assert!(!accepts(
            "Is it safe to eat raw eggs?",
            "Is it not safe to eat raw eggs?"
        ));
        assert!(!accepts("Why do cats purr?", "Why don't cats purr?"));
        assert!(accepts(
            "How do I reset my password?",
            "How can I reset my password?"
        ));
        assert!(accepts("not never", "plain"), "double negation cancels");
    }

    #[test]
    fn disabled_accepts_everything() {
        let off = VerifyConfig {
            enabled: false,
            ..VerifyConfig::default()
        };
        assert!(off.accepts("2+2", "2+3"));
    }
}
