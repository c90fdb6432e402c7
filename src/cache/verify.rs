//! A second opinion on semantic candidates. Cosine similarity can't tell "turn on the light"
//! from "turn off the light", or "2+2" from "2+3", and it scores word-swapped sentences
//! almost 1. This check runs only on candidates above the threshold, where it is cheap next to
//! an upstream call. It rejects a candidate whose prompt disagrees with the query on something
//! that changes the answer.
//!
//! Tuned on PAWS-Wiki dev (`deja bench quality`, `benches/results/quality-paws-dev.md`): its
//! wrong pairs swap two names or phrases, and the word-order check below catches most of them.

use std::collections::{BTreeMap, HashMap, HashSet};

#[cfg(feature = "local-embeddings")]
pub mod cross_encoder;
pub mod model;
mod numbers;

pub use crate::config::{ModelVerifyConfig, VerifyConfig};
pub use model::ModelJudge;

/// Words that flip a statement or question. Counted by parity, so "not un-" stays cheap to
/// reason about and double negatives cancel.
const NEGATIONS: [&str; 10] = [
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "without", "cannot",
];

/// Function words: they neither carry a name nor anchor a swap.
const FUNCTION_WORDS: [&str; 46] = [
    "a", "an", "the", "of", "in", "on", "at", "to", "for", "from", "by", "with", "and", "or", "as",
    "is", "was", "were", "be", "been", "are", "it", "its", "this", "that", "these", "those",
    "which", "who", "whom", "whose", "he", "she", "they", "his", "her", "their", "has", "had",
    "have", "do", "does", "did", "not", "no", "i",
];

/// Shortest name that may match a longer word it begins ("German" and "Germany").
const MIN_PREFIX: usize = 4;

impl VerifyConfig {
    /// Whether a cached answer to `candidate` may answer `query`.
    pub fn accepts(&self, query: &str, candidate: &str) -> bool {
        if !self.enabled {
            return true;
        }
        let (q, c) = (Features::of(query), Features::of(candidate));
        (!self.numbers || q.numbers == c.numbers)
            && (!self.negation || q.negated == c.negated)
            && (!self.entities || (q.names_found_in(&c) && c.names_found_in(&q)))
            && (!self.word_order || !swapped(&q.words, &c.words))
    }
}

/// What the checks compare, extracted once per text.
#[derive(Debug, PartialEq)]
struct Features {
    numbers: BTreeMap<String, usize>,
    negated: bool,
    /// Every word, lowercased, in order ("'s" kept: "france's" is not "france").
    words: Vec<String>,
    /// Lowercased capitalised words that do not start a sentence, without "'s".
    names: HashSet<String>,
}

/// A word of the text: letters and digits, with inner apostrophes ("don't", "France's").
struct Word<'t> {
    text: &'t str,
    starts_sentence: bool,
    /// The characters just before and after it.
    before: Option<char>,
    after: Option<char>,
}

fn scan(text: &str) -> Vec<Word<'_>> {
    let mut words = Vec::new();
    let mut sentence_start = true;
    let mut chars = text.char_indices().peekable();
    let mut before = None;
    while let Some((start, c)) = chars.next() {
        if !c.is_alphanumeric() {
            if matches!(c, '.' | '!' | '?') {
                sentence_start = true;
            }
            before = Some(c);
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, next)) = chars.peek() {
            let inner_apostrophe = is_apostrophe(next)
                && text[i + next.len_utf8()..]
                    .chars()
                    .next()
                    .is_some_and(char::is_alphanumeric);
            if !(next.is_alphanumeric() || inner_apostrophe) {
                break;
            }
            end = i + next.len_utf8();
            chars.next();
        }
        words.push(Word {
            text: &text[start..end],
            starts_sentence: sentence_start,
            before,
            after: text[end..].chars().next(),
        });
        sentence_start = false;
        before = text[..end].chars().next_back();
    }
    words
}

fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '\u{2019}')
}

/// Lowercase, with a typographic apostrophe made plain.
fn fold(word: &str) -> String {
    word.to_lowercase().replace('\u{2019}', "'")
}

impl Features {
    fn of(text: &str) -> Features {
        let lower = fold(text);
        let mut numbers = numbers::numbers(&lower);
        let mut negations = 0usize;
        for word in lower.split(|c: char| !(c.is_alphanumeric() || c == '\'')) {
            let word = word.trim_matches('\'');
            if let Some(value) = number_word(word) {
                *numbers.entry(value.to_string()).or_default() += 1;
            }
            if NEGATIONS.contains(&word) || word.ends_with("n't") {
                negations += 1;
            }
        }
        let mut words = Vec::new();
        let mut names = HashSet::new();
        for word in scan(text) {
            let lower = fold(word.text);
            // "No, it isn't": an answer word, not a negation of the sentence.
            if word.starts_sentence && lower == "no" && next_visible(text, &word) == Some(',') {
                negations = negations.saturating_sub(1);
            }
            // "1) ... 2) ...": list markers, not numbers.
            if word.text.len() <= 2
                && word.text.chars().all(|c| c.is_ascii_digit())
                && word.after == Some(')')
                && word
                    .before
                    .is_none_or(|c| c.is_whitespace() || matches!(c, ':' | ';' | '('))
                && let Some(marker) = numbers::canonical(word.text, false)
            {
                remove_one(&mut numbers, &marker);
            }
            let first = word.text.chars().next().unwrap_or_default();
            if first.is_uppercase() && !word.starts_sentence && lower != "i" {
                let name = lower.strip_suffix("'s").unwrap_or(&lower);
                if !name.starts_with("i'") {
                    names.insert(name.to_string());
                }
            }
            words.push(lower);
        }
        Features {
            numbers,
            negated: negations % 2 == 1,
            words,
            names,
        }
    }

    /// Every name of `self` is a word of `other` ("France's" counts as "France"), or begins
    /// one or is begun by one, when both have at least `MIN_PREFIX` characters.
    fn names_found_in(&self, other: &Features) -> bool {
        let stems: HashSet<&str> = other
            .words
            .iter()
            .map(|w| w.strip_suffix("'s").unwrap_or(w))
            .collect();
        self.names.iter().all(|name| {
            stems.contains(name.as_str())
                || stems.iter().any(|word| {
                    name.chars().count().min(word.chars().count()) >= MIN_PREFIX
                        && (word.starts_with(name.as_str()) || name.starts_with(word))
                })
        })
    }
}

/// The first character after `word` that is not a space.
fn next_visible(text: &str, word: &Word) -> Option<char> {
    let end = word.text.as_ptr() as usize - text.as_ptr() as usize + word.text.len();
    text[end..].chars().find(|c| !c.is_whitespace())
}

fn remove_one(numbers: &mut BTreeMap<String, usize>, number: &str) {
    if let Some(count) = numbers.get_mut(number) {
        *count -= 1;
        if *count == 0 {
            numbers.remove(number);
        }
    }
}

/// Whether two content words traded places: each now stands where the other stood, next to
/// the other's neighbour. "Paris" after "from" and "London" after "to" in one text, "London"
/// after "from" and "Paris" after "to" in the other. Only words that occur once in each text
/// count, and a neighbour is either the adjacent word or the adjacent content word; the start
/// and end of the text are no neighbours (a passive sentence moves its subject there). A
/// clause that moves as a whole keeps its inner neighbours, so rewording passes.
fn swapped(a: &[String], b: &[String]) -> bool {
    let (in_a, in_b) = (counts(a), counts(b));
    let content = |word: &str| !FUNCTION_WORDS.contains(&word);
    let shared: Vec<&str> = in_a
        .iter()
        .filter(|&(word, n)| *n == 1 && in_b.get(word) == Some(&1) && content(word))
        .map(|(word, _)| *word)
        .collect();
    if shared.len() < 2 {
        return false;
    }
    let a_content: Vec<String> = a.iter().filter(|w| content(w)).cloned().collect();
    let b_content: Vec<String> = b.iter().filter(|w| content(w)).cloned().collect();
    [(a, b), (&a_content[..], &b_content[..])]
        .into_iter()
        .any(|(a, b)| {
            let (near_a, near_b) = (neighbours(a), neighbours(b));
            (0..2).any(|side| {
                let mut moves: HashSet<(&str, &str)> = HashSet::new();
                for word in &shared {
                    let from = near_a.get(word).and_then(|n| n[side]);
                    let to = near_b.get(word).and_then(|n| n[side]);
                    if let (Some(from), Some(to)) = (from, to)
                        && from != to
                    {
                        moves.insert((from, to));
                    }
                }
                moves.iter().any(|&(from, to)| moves.contains(&(to, from)))
            })
        })
}

fn counts(words: &[String]) -> HashMap<&str, usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for word in words {
        *counts.entry(word.as_str()).or_default() += 1;
    }
    counts
}

/// Each word's previous and next word (`None` at the edges).
fn neighbours(words: &[String]) -> HashMap<&str, [Option<&str>; 2]> {
    let mut near = HashMap::with_capacity(words.len());
    for (i, word) in words.iter().enumerate() {
        let previous = i.checked_sub(1).map(|j| words[j].as_str());
        let next = words.get(i + 1).map(String::as_str);
        near.insert(word.as_str(), [previous, next]);
    }
    near
}

/// "one" is left out: far more often a pronoun ("one can") than a count.
fn number_word(word: &str) -> Option<u32> {
    const WORDS: [&str; 13] = [
        "zero", "", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve",
    ];
    WORDS
        .iter()
        .position(|w| !w.is_empty() && *w == word)
        .map(|i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accepts(a: &str, b: &str) -> bool {
        VerifyConfig::default().accepts(a, b)
    }

    fn accepts_names(a: &str, b: &str) -> bool {
        let config = VerifyConfig {
            entities: true,
            ..VerifyConfig::default()
        };
        config.accepts(a, b)
    }

    #[test]
    fn numbers_must_agree() {
        assert!(!accepts("What is 2+2?", "What is 2+3?"));
        assert!(!accepts("Top 5 movies of 2023", "Top 10 movies of 2023"));
        assert!(!accepts("a list of three fruits", "a list of four fruits"));
        assert!(accepts("What is 1,000 times 3?", "what's 1000 times 3"));
        assert!(accepts("give me three fruits", "name 3 fruits"));
        assert!(accepts("Is it in v2.10.0?", "Is it in version 2.10.0?"));
        assert!(accepts("How can one learn Rust?", "How do I learn Rust?"));
        assert!(accepts(
            "It works in two steps: 1) download, 2) build.",
            "It works in two steps: download, then build."
        ));
    }

    #[test]
    fn numbers_compare_as_exact_decimals() {
        // Changed numbers that a float or ASCII-only reading merged or missed.
        assert!(!accepts("Is .25 a fraction?", "Is 25 a fraction?"));
        assert!(!accepts(
            "Status of order 123456789012345678?",
            "Status of order 123456789012345679?"
        ));
        assert!(!accepts("What is 2 squared?", "What is \u{FF13} squared?"));
        assert!(!accepts("What is 2 squared?", "What is \u{0663} squared?"));
        assert!(!accepts("Is -3 a root?", "Is 3 a root?"));
        assert!(!accepts("Add 1,2 and 3", "Add 12 and 3"));
        // The same number written another way.
        assert!(accepts("Is 1.50 enough?", "Is 1.5 enough?"));
        assert!(accepts("Is .25 a fraction?", "Is 0.25 a fraction?"));
        assert!(accepts("What is 2 squared?", "What is \u{FF12} squared?"));
        assert!(accepts("What is 2 squared?", "What is \u{0662} squared?"));
        assert!(accepts("Pay 1,000 dollars", "Pay 1000 dollars"));
        assert!(accepts("Round -2.0", "Round \u{2212}2"));
    }

    #[test]
    fn negation_must_agree() {
        assert!(!accepts(
            "Is it safe to eat raw eggs?",
            "Is it not safe to eat raw eggs?"
        ));
        assert!(!accepts("Why do cats purr?", "Why don't cats purr?"));
        assert!(!accepts("Why do cats purr?", "Why don\u{2019}t cats purr?"));
        assert!(accepts(
            "How do I reset my password?",
            "How can I reset my password?"
        ));
        assert!(accepts("not never", "plain"), "double negation cancels");
        assert!(accepts(
            "No, I meant the Python version",
            "I meant the Python version"
        ));
        assert!(accepts("No, it doesn't exist.", "It does not exist."));
        assert!(!accepts("Is the answer no?", "Is the answer yes?"));
    }

    #[test]
    fn names_must_agree() {
        assert!(!accepts_names(
            "translate hello to French",
            "translate hello to German"
        ));
        assert!(!accepts_names(
            "How do I sort a list in Python?",
            "How do I sort a list in Rust?"
        ));
        assert!(!accepts_names("Who wrote Hamlet?", "Who wrote Macbeth?"));
        assert!(accepts_names(
            "What's the capital of France",
            "what is France's capital"
        ));
        assert!(accepts_names(
            "What is the capital of Germany?",
            "What is the German capital?"
        ));
        assert!(accepts_names(
            "Explain how HTTPS works",
            "can you explain how https works?"
        ));
        assert!(accepts_names(
            "Can I use it with Python?",
            "Can you use it with python?"
        ));
        assert!(
            accepts("WHAT IS RUST", "What is Rust?"),
            "shouting is no name"
        );
    }

    #[test]
    fn swapped_words_are_rejected() {
        assert!(!accepts(
            "Flights from Paris to London",
            "Flights from London to Paris"
        ));
        assert!(!accepts(
            "Convert Celsius to Fahrenheit",
            "Convert Fahrenheit to Celsius"
        ));
        assert!(!accepts(
            "Is Alice older than Bob?",
            "Is Bob older than Alice?"
        ));
        assert!(!accepts(
            "Did Germany beat Brazil in 2014?",
            "Did Brazil beat Germany in 2014?"
        ));
        assert!(!accepts(
            "Joshua Pim beat Wilfred Baddeley in the final at Wimbledon.",
            "Wilfred Baddeley beat Joshua Pim in the final at Wimbledon."
        ));
    }

    #[test]
    fn ordinary_rewording_passes() {
        for (a, b) in [
            (
                "Can you explain how HTTPS works?",
                "Explain how HTTPS works",
            ),
            (
                "Write a Python function to reverse a string",
                "Write a function in Python that reverses a string",
            ),
            (
                "What is the difference between TCP and UDP?",
                "How does TCP differ from UDP?",
            ),
            (
                "Summarize the plot of Hamlet",
                "Give me a summary of Hamlet's plot",
            ),
            (
                "What's the weather usually like in Tokyo in April?",
                "What is Tokyo's weather usually like in April?",
            ),
            (
                "Convert 5 miles to kilometers",
                "How many kilometers is 5 miles?",
            ),
            (
                "How many days are in a leap year?",
                "How many days does a leap year have?",
            ),
            (
                "I can't log in to my account",
                "I cannot log into my account",
            ),
            (
                "list three benefits of exercise",
                "give me 3 benefits of exercising",
            ),
            (
                "Tabular datasets can be loaded from CSV files.",
                "CSV files can be used to load tabular datasets.",
            ),
            (
                "In August, after the war ended, Higgins left Southampton.",
                "After the war ended, Higgins left Southampton in August.",
            ),
        ] {
            assert!(accepts(a, b), "{a:?} vs {b:?}");
            assert!(accepts(b, a), "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn each_check_can_be_turned_off() {
        let only = |f: fn(&mut VerifyConfig)| {
            let mut config = VerifyConfig {
                numbers: false,
                negation: false,
                entities: false,
                word_order: false,
                ..VerifyConfig::default()
            };
            f(&mut config);
            config
        };
        let pairs = [
            ("What is 2+2?", "What is 2+3?"),
            ("Is it safe?", "Is it not safe?"),
            ("Hello in French", "Hello in German"),
            ("from Paris to Rome", "from Rome to Paris"),
        ];
        let checks: [fn(&mut VerifyConfig); 4] = [
            |c| c.numbers = true,
            |c| c.negation = true,
            |c| c.entities = true,
            |c| c.word_order = true,
        ];
        for (i, check) in checks.into_iter().enumerate() {
            let config = only(check);
            for (j, (a, b)) in pairs.iter().enumerate() {
                assert_eq!(config.accepts(a, b), i != j, "check {i} on pair {j}");
            }
        }
    }

    #[test]
    fn disabled_accepts_everything() {
        let off = VerifyConfig {
            enabled: false,
            ..VerifyConfig::default()
        };
        assert!(off.accepts("2+2", "2+3"));
    }

    #[test]
    fn older_configs_still_load() {
        let config: VerifyConfig = serde_json::from_str(r#"{"numbers": false}"#).unwrap();
        assert!(config.word_order && !config.entities && !config.numbers);
    }
}
