//! Multi-part questions. A question that states a fact and then asks about it ("The default
//! pickle protocol lacks X. Which version must be requested to get it?"), or asks two things at
//! once ("which level does gzip use, and which does zlib's default correspond to?"), needs
//! passages that one search for the whole question tends to miss: the whole question's words
//! pull towards whichever part dominates. Each part is also searched on its own, and the
//! rankings are fused with the whole question's (`QueryEngine::search_with`).

use super::extractive;

/// At most this many parts are searched besides the whole question.
const MAX_PARTS: usize = 3;
/// A part needs this many content words (not stop words) to be worth a search.
const MIN_TERMS: usize = 2;

/// Words that open a question of its own after `, and` / `, or` / `, but`.
const OPENERS: &[&str] = &[
    "which", "what", "how", "who", "whom", "whose", "when", "where", "why", "is", "are", "does",
    "do", "did", "can", "could", "should", "would", "will", "was", "were", "has", "have",
];

/// The parts of `question` worth searching on their own, or none when it is one part. Parts
/// are its sentences and clauses: split after `.`, `?`, `!`, `:` or `;` followed by a space
/// (so `os.path.join` and `3.11` stay whole), and before `, and` / `, or` / `, but` when a
/// question word follows. A part with fewer than two content words (`e.g.`, `Compare:`) is
/// not searched alone.
pub fn parts(question: &str) -> Vec<String> {
    let mut pieces: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut chars = question.chars().peekable();
    while let Some(c) = chars.next() {
        cur.push(c);
        let ends = matches!(c, '.' | '?' | '!' | ':' | ';')
            && chars.peek().is_some_and(|n| n.is_whitespace());
        if ends {
            pieces.push(std::mem::take(&mut cur));
        }
    }
    pieces.push(cur);
    let mut out: Vec<String> = Vec::new();
    for piece in pieces {
        out.extend(clauses(&piece));
    }
    let out: Vec<String> = out
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| extractive::terms(p).len() >= MIN_TERMS)
        .collect();
    if out.len() < 2 {
        return vec![];
    }
    out.into_iter().take(MAX_PARTS).collect()
}

/// `piece` split before each `, and` / `, or` / `, but` that a question word follows.
fn clauses(piece: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = piece;
    'outer: loop {
        let mut from = 0;
        while let Some(i) = rest[from..].find(", ") {
            let at = from + i;
            let after = &rest[at + 2..];
            let mut words = after.split_whitespace();
            let joiner = words.next().unwrap_or("");
            let opener = words.next().unwrap_or("").to_lowercase();
            if matches!(joiner, "and" | "or" | "but") && OPENERS.contains(&opener.as_str()) {
                out.push(rest[..at].to_string());
                rest = after[joiner.len()..].trim_start();
                continue 'outer;
            }
            from = at + 2;
        }
        out.push(rest.to_string());
        return out;
    }
}

#[cfg(test)]
mod tests {
    use super::parts;

    #[test]
    fn a_statement_then_a_question_is_two_parts() {
        assert_eq!(
            parts("The default protocol lacks buffer support. Which protocol version adds it?"),
            vec![
                "The default protocol lacks buffer support.",
                "Which protocol version adds it?"
            ]
        );
    }

    #[test]
    fn two_questions_joined_by_and_are_two_parts() {
        assert_eq!(
            parts(
                "Compare two limits: which size does the reader allow, and which size does the writer allow?"
            ),
            vec![
                "Compare two limits:",
                "which size does the reader allow",
                "which size does the writer allow?"
            ]
        );
    }

    #[test]
    fn one_part_questions_are_not_split() {
        assert!(parts("What is the default value of max_workers?").is_empty());
        // Dots inside names and numbers are not sentence ends.
        assert!(parts("What does os.path.join return in Python 3.11?").is_empty());
        // A clause joined by "and" without a question word of its own stays.
        assert!(parts("Which module reads TOML files, and writes them?").is_empty());
        // A part too small to search alone leaves one part.
        assert!(parts("In short: what does the walrus operator do?").is_empty());
    }
}
