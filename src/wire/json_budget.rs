//! What a JSON request body may cost before deja builds a tree of it. A tree costs about
//! 60 bytes per value, so a 32 MiB body of `[0,0,0,...]` would take a gigabyte: the values
//! are counted first, with a scan that allocates nothing.

/// Whether `text` holds at most `limit` JSON items: array elements, object members and
/// containers (`[`, `{`, `,` and `:` outside strings). Invalid JSON is counted the same way;
/// the parser reports what is wrong with it afterwards.
pub fn within(text: &[u8], limit: usize) -> bool {
    let mut items = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in text {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' | b',' | b':' => {
                items += 1;
                if items > limit {
                    return false;
                }
            }
            _ => {}
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::within;

    #[test]
    fn counts_items_outside_strings_only() {
        // `[` + 2 commas, `{` + 2 colons + 1 comma.
        assert!(within(b"[0,0,0]", 3) && !within(b"[0,0,0]", 2));
        assert!(within(br#"{"a":1,"b":2}"#, 4) && !within(br#"{"a":1,"b":2}"#, 3));
        // Separators inside strings, escaped quotes included, are text.
        assert!(within(br#"["a,b:[{", "\",[,"]"#, 2));
    }
}
