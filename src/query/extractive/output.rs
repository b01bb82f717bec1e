//! What the answer looks like on the way out: whether it declines, and its streaming pieces.

/// Whether an answer declines (for the extractive answerer and for models told how to decline).
pub fn is_decline(answer: &str) -> bool {
    let a = answer.to_lowercase();
    [
        "i don't know",
        "i do not know",
        "do not contain the answer",
        "does not contain the answer",
        "not found in the documents",
        "cannot find",
        "no information",
    ]
    .iter()
    .any(|p| a.contains(p))
}

/// Split an answer into streaming pieces (a word and its trailing space).
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in text.chars() {
        cur.push(c);
        if c.is_whitespace() {
            out.push(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}
