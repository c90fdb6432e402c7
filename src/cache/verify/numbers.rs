//! The numbers of a text, as exact decimal strings: "2.50", "2.5" and "٢٫٥" are one number,
//! "-3" and "3" are two, and an 18-digit id is compared digit for digit (never as a float,
//! which would merge ids that differ in their last digits). One pass over the text.

use std::collections::BTreeMap;

/// The zero of each common block of decimal digits (Unicode category Nd); the nine digits
/// after it follow in order.
const DIGIT_ZEROS: [u32; 20] = [
    0x0030, // ASCII
    0x0660, // Arabic-Indic
    0x06F0, // Extended Arabic-Indic (Persian, Urdu)
    0x07C0, // NKo
    0x0966, // Devanagari
    0x09E6, // Bengali
    0x0A66, // Gurmukhi
    0x0AE6, // Gujarati
    0x0B66, // Oriya
    0x0BE6, // Tamil
    0x0C66, // Telugu
    0x0CE6, // Kannada
    0x0D66, // Malayalam
    0x0E50, // Thai
    0x0ED0, // Lao
    0x0F20, // Tibetan
    0x1040, // Myanmar
    0x17E0, // Khmer
    0x1810, // Mongolian
    0xFF10, // Fullwidth
];

/// A character as the scanner reads it: any decimal digit as ASCII, the other scripts' decimal
/// and thousands separators and minus signs as ASCII punctuation.
fn plain(c: char) -> char {
    if c.is_ascii() {
        return c;
    }
    let code = c as u32;
    // Mathematical digits: five styles of ten, from U+1D7CE to U+1D7FF.
    if (0x1D7CE..=0x1D7FF).contains(&code) {
        return char::from(b'0' + ((code - 0x1D7CE) % 10) as u8);
    }
    for zero in DIGIT_ZEROS {
        if (zero..zero + 10).contains(&code) {
            return char::from(b'0' + (code - zero) as u8);
        }
    }
    match c {
        '\u{066B}' | '\u{FF0E}' => '.', // Arabic decimal separator, fullwidth full stop
        '\u{066C}' | '\u{FF0C}' => ',', // Arabic thousands separator, fullwidth comma
        '\u{2212}' | '\u{FF0D}' | '\u{2012}' | '\u{FE63}' => '-', // minus signs
        '\u{FF0B}' => '+',
        _ => c,
    }
}

/// Every number of `lower` (already lowercased) with how often it occurs. A number is a run
/// of letters and digits that holds a digit ("42", "v2.10.0", "4o", "x86"), with its sign when
/// one stands right before it, and with inner points and thousands commas. A run that reads as
/// a decimal is put in canonical form; any other run is kept as written.
pub(super) fn numbers(lower: &str) -> BTreeMap<String, usize> {
    let chars: Vec<char> = lower.chars().map(plain).collect();
    let mut found = BTreeMap::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let point_first = c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit);
        if !(c.is_alphanumeric() || point_first) {
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < chars.len() {
            let next = chars[end];
            let before = chars[end - 1];
            let digit_after = chars.get(end + 1).is_some_and(char::is_ascii_digit);
            let inner = match next {
                '.' => before.is_alphanumeric() && digit_after,
                ',' => before.is_ascii_digit() && digit_after,
                '\'' => chars.get(end + 1).is_some_and(|c| c.is_alphanumeric()),
                _ => next.is_alphanumeric(),
            };
            if !inner {
                break;
            }
            end += 1;
        }
        let run = &chars[i..end];
        if run.iter().any(|c| c.is_ascii_digit() || c.is_numeric()) {
            let negative = i > 0
                && chars[i - 1] == '-'
                && (i < 2 || !chars[i - 2].is_alphanumeric())
                && (c.is_ascii_digit() || point_first);
            let run: String = run.iter().collect();
            for number in read(&run, negative) {
                *found.entry(number).or_default() += 1;
            }
        }
        i = end;
    }
    found
}

/// The numbers one run stands for: one, or several when commas separate numbers ("1,2,3")
/// rather than thousands ("1,000").
fn read(run: &str, negative: bool) -> Vec<String> {
    if run.contains(',') {
        if let Some(number) = thousands(run).and_then(|plain| canonical(&plain, negative)) {
            return vec![number];
        }
        return run
            .split(',')
            .enumerate()
            .map(|(i, part)| read_one(part, negative && i == 0))
            .collect();
    }
    vec![read_one(run, negative)]
}

fn read_one(run: &str, negative: bool) -> String {
    // "v2.10" is version 2.10.
    let bare = match run.strip_prefix('v') {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => rest,
        _ => run,
    };
    canonical(bare, negative).unwrap_or_else(|| {
        let sign = if negative { "-" } else { "" };
        format!("{sign}{bare}")
    })
}

/// "12,345.6" as "12345.6", when every group after the first has three digits and the first
/// has one to three; `None` for any other use of commas.
fn thousands(run: &str) -> Option<String> {
    let (whole, fraction) = match run.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (run, None),
    };
    let mut groups = whole.split(',');
    let first = groups.next()?;
    let first_ok = (1..=3).contains(&first.len());
    let rest_ok = groups.all(|g| g.len() == 3);
    if !(first_ok && rest_ok) {
        return None;
    }
    let mut plain = whole.replace(',', "");
    if let Some(fraction) = fraction {
        plain.push('.');
        plain.push_str(fraction);
    }
    Some(plain)
}

/// The canonical text of a decimal ("007.50" → "7.5", ".25" → "0.25", "-0" → "0"), or
/// `None` when `text` is not digits with at most one point.
pub(super) fn canonical(text: &str, negative: bool) -> Option<String> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !(digits(whole) && digits(fraction)) || whole.len() + fraction.len() == 0 {
        return None;
    }
    let whole = whole.trim_start_matches('0');
    let fraction = fraction.trim_end_matches('0');
    let mut out = String::with_capacity(whole.len() + fraction.len() + 3);
    if negative && !(whole.is_empty() && fraction.is_empty()) {
        out.push('-');
    }
    out.push_str(if whole.is_empty() { "0" } else { whole });
    if !fraction.is_empty() {
        out.push('.');
        out.push_str(fraction);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(text: &str) -> Vec<String> {
        let mut all = Vec::new();
        for (number, count) in numbers(&text.to_lowercase()) {
            all.extend(std::iter::repeat_n(number, count));
        }
        all
    }

    #[test]
    fn decimals_have_one_canonical_form() {
        assert_eq!(list("1.50 and 1.5"), ["1.5", "1.5"]);
        assert_eq!(list(".25 or 0.25"), ["0.25", "0.25"]);
        assert_eq!(list("007 and 1000.0"), ["1000", "7"]);
        assert_eq!(list("0.0 and 0"), ["0", "0"]);
        assert_eq!(list("It costs 5."), ["5"]);
    }

    #[test]
    fn the_sign_counts() {
        assert_eq!(list("-3 and 3"), ["-3", "3"]);
        assert_eq!(list("x = -0.5"), ["-0.5"]);
        assert_eq!(list("\u{2212}4 degrees"), ["-4"]);
        assert_eq!(list("-0"), ["0"]);
        // A hyphen after a word or a digit is no sign.
        assert_eq!(list("gpt-4 and 5-3"), ["3", "4", "5"]);
    }

    #[test]
    fn long_ids_keep_every_digit() {
        let a = list("order 123456789012345678");
        let b = list("order 123456789012345679");
        assert_ne!(a, b);
        assert_eq!(a, ["123456789012345678"]);
    }

    #[test]
    fn digits_of_other_scripts_read_as_ascii() {
        assert_eq!(list("\u{FF12}\u{FF10}"), ["20"], "fullwidth");
        assert_eq!(list("\u{0662}\u{0665}"), ["25"], "Arabic-Indic");
        assert_eq!(list("\u{06F3}"), ["3"], "Extended Arabic-Indic");
        assert_eq!(list("\u{0967}\u{0966}"), ["10"], "Devanagari");
        assert_eq!(list("\u{09E8}"), ["2"], "Bengali");
        assert_eq!(
            list("\u{0662}\u{066B}\u{0665}"),
            ["2.5"],
            "Arabic decimal separator"
        );
        assert_eq!(list("\u{1D7D0}"), ["2"], "mathematical bold");
    }

    #[test]
    fn commas_separate_thousands_or_numbers() {
        assert_eq!(list("1,000 and 1000"), ["1000", "1000"]);
        assert_eq!(list("12,345.60"), ["12345.6"]);
        assert_eq!(list("1,2,3"), ["1", "2", "3"]);
        assert_eq!(list("1,5"), ["1", "5"]);
        assert_eq!(list("1, 2"), ["1", "2"]);
    }

    #[test]
    fn identifiers_are_kept_as_written() {
        assert_eq!(list("v2.10.0 and 2.10.0"), ["2.10.0", "2.10.0"]);
        assert_eq!(list("v2.10"), ["2.1"]);
        assert_eq!(list("gpt-4o"), ["4o"]);
        assert_eq!(list("x86_64"), ["64", "x86"]);
    }

    #[test]
    fn long_input_is_read_in_one_pass() {
        // One run of 400,000 characters, and one of 200,000 numbers.
        let text = "1.".repeat(200_000);
        assert_eq!(list(&text).len(), 1);
        let text = "9,".repeat(200_000);
        assert_eq!(list(&text).len(), 200_000);
    }
}
