//! Small text helpers shared by the endpoints' replay code.

/// Text deltas are cut at word boundaries into pieces of about this many bytes, so a replayed
/// stream still renders progressively in chat UIs.
const PIECE_BYTES: usize = 24;

/// Splits text after whitespace into pieces of at least `PIECE_BYTES` (the last may be
/// shorter); concatenating them gives the text back exactly.
pub fn pieces(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < text.len() {
        let end = piece_end(text, start);
        out.push(&text[start..end]);
        start = end;
    }
    out
}

/// Where the piece of `text` that begins at `start` ends (see `pieces`), so a replay can cut
/// its pieces one at a time as the client reads them.
pub fn piece_end(text: &str, start: usize) -> usize {
    for (i, c) in text[start..].char_indices() {
        let end = start + i + c.len_utf8();
        if c.is_whitespace() && end - start >= PIECE_BYTES {
            return end;
        }
    }
    text.len()
}

/// A new id such as OpenAI's (`prefix` + `len` random letters and digits), so each served
/// answer is distinguishable even when its content came from the cache.
pub fn fresh_id(prefix: &str, len: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + len);
    id.push_str(prefix);
    id.extend(std::iter::repeat_with(fastrand::alphanumeric).take(len));
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_concatenate_back() {
        let text = "one two three four five six seven eight nine ten eleven twelve";
        let parts = pieces(text);
        assert!(parts.len() > 1);
        assert_eq!(parts.concat(), text);
        assert!(pieces("").is_empty());
        assert_eq!(pieces("ünïcödé wörds ").concat(), "ünïcödé wörds ");
    }

    #[test]
    fn fresh_ids_differ() {
        let a = fresh_id("chatcmpl-", 29);
        assert!(a.starts_with("chatcmpl-") && a.len() == 38);
        assert_ne!(a, fresh_id("chatcmpl-", 29));
    }
}
