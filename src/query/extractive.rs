//! The extractive answerer: no model, no invention. It quotes the passage of the sources that
//! best covers the question (a window of one to three sentences), with its citation, and
//! declines when no passage covers enough of the question.

use super::Source;
use std::collections::{HashMap, HashSet};

pub const DECLINE: &str = "I don't know: the documents do not contain the answer.";

/// Least share of the question's (IDF-weighted) terms a passage must cover to be quoted.
const MIN_COVERAGE: f64 = 0.34;
const MAX_WINDOW_WORDS: usize = 90;

const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that",
    "these", "those", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "do",
    "does", "did", "doing", "can", "could", "should", "would", "will", "shall", "may", "might",
    "must", "i", "you", "he", "she", "we", "they", "me", "my", "your", "our", "their", "there",
    "here", "than", "then", "so", "such", "into", "about", "over", "under", "any", "all", "some",
    "no", "not", "only", "own", "same", "too", "very", "s", "t", "just", "also", "has", "have",
    "had", "having", "am", "up", "out", "one", "get", "use", "used", "using", "tell", "give",
    "name", "called", "value", "python", "kind",
];

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

fn stem(w: &str) -> &str {
    for suf in ["ing", "ed", "es", "s"] {
        if w.len() > suf.len() + 3 && w.ends_with(suf) {
            return &w[..w.len() - suf.len()];
        }
    }
    w
}

fn terms(question: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    words(question)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w).to_string())
        .filter(|w| seen.insert(w.clone()))
        .collect()
}

/// Split text into sentences (and lines: headings, list items and table rows stand alone).
fn sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let line = line
            .trim()
            .trim_start_matches('#')
            .trim_start_matches("- ")
            .trim();
        if line.is_empty() {
            continue;
        }
        let chars: Vec<(usize, char)> = line.char_indices().collect();
        let mut start = 0;
        for (i, &(pos, c)) in chars.iter().enumerate() {
            if matches!(c, '.' | '?' | '!') {
                let next = chars.get(i + 1).map(|x| x.1);
                let after = chars.get(i + 2).map(|x| x.1);
                let boundary = next == Some(' ')
                    && after.is_some_and(|a| {
                        a.is_uppercase() || a.is_ascii_digit() || a == '"' || a == '('
                    });
                if boundary {
                    let end = pos + c.len_utf8();
                    out.push(line[start..end].trim().to_string());
                    start = end;
                }
            }
        }
        let rest = line[start..].trim();
        if !rest.is_empty() {
            out.push(rest.to_string());
        }
    }
    out
}

struct Passage {
    source: usize,
    text: String,
    score: f64,
    coverage: f64,
}

fn matches_term(word_stems: &HashSet<String>, term: &str) -> bool {
    word_stems.contains(term)
        || (term.len() >= 5
            && word_stems
                .iter()
                .any(|w| w.len() >= 5 && (w.starts_with(term) || term.starts_with(w.as_str()))))
}

fn best_passages(question: &str, sources: &[Source]) -> Vec<Passage> {
    let q = terms(question);
    if q.is_empty() || sources.is_empty() {
        return vec![];
    }
    // Sentences per source, with their stemmed word sets.
    let per_source: Vec<Vec<(String, HashSet<String>)>> = sources
        .iter()
        .map(|s| {
            sentences(&s.text)
                .into_iter()
                .map(|t| {
                    let set = words(&t).iter().map(|w| stem(w).to_string()).collect();
                    (t, set)
                })
                .collect()
        })
        .collect();
    // IDF of each question term over all sentences: rare terms matter more.
    let n_sent = per_source.iter().map(|s| s.len()).sum::<usize>().max(1) as f64;
    let mut weight: HashMap<&str, f64> = HashMap::new();
    for t in &q {
        let df = per_source
            .iter()
            .flatten()
            .filter(|(_, set)| matches_term(set, t))
            .count() as f64;
        weight.insert(t, (1.0 + n_sent / (1.0 + df)).ln().max(0.1));
    }
    let total: f64 = weight.values().sum();
    let mut out = Vec::new();
    for (si, sents) in per_source.iter().enumerate() {
        for start in 0..sents.len() {
            let mut text = String::new();
            let mut set: HashSet<String> = HashSet::new();
            for sent in sents.iter().skip(start).take(3) {
                let n_words = text.split_whitespace().count() + sent.0.split_whitespace().count();
                if !text.is_empty() && n_words > MAX_WINDOW_WORDS {
                    break;
                }
                if !text.is_empty() {
                    text.push(' ');
                }
                text.push_str(&sent.0);
                set.extend(sent.1.iter().cloned());
                let covered: f64 = q
                    .iter()
                    .filter(|t| matches_term(&set, t))
                    .map(|t| weight[t.as_str()])
                    .sum();
                let coverage = covered / total;
                let n = text.split_whitespace().count() as f64;
                let rank_bonus = 0.08 / (1.0 + si as f64);
                let score = coverage + rank_bonus - 0.0025 * n;
                out.push(Passage {
                    source: si,
                    text: text.clone(),
                    score,
                    coverage,
                });
            }
        }
    }
    out.sort_by(|a, b| b.score.total_cmp(&a.score));
    out
}

/// The answer text, with `[n]` citations, or [`DECLINE`].
pub fn answer(question: &str, sources: &[Source]) -> String {
    let passages = best_passages(question, sources);
    let Some(best) = passages.first() else {
        return DECLINE.to_string();
    };
    if best.coverage < MIN_COVERAGE {
        return DECLINE.to_string();
    }
    let mut out = format!("{} [{}]", best.text, sources[best.source].n);
    // A second passage from another source when it is nearly as good (questions that need two).
    if let Some(second) = passages.iter().find(|p| {
        p.source != best.source && p.score >= best.score * 0.85 && p.coverage >= MIN_COVERAGE
    }) {
        if !best.text.contains(&second.text) && !second.text.contains(&best.text) {
            out.push_str(&format!(
                "\n\n{} [{}]",
                second.text, sources[second.source].n
            ));
        }
    }
    out
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn src(n: usize, text: &str) -> Source {
        Source {
            n,
            chunk_id: format!("c{n}"),
            doc_id: "d".into(),
            doc_name: "doc".into(),
            page: None,
            heading: None,
            score: 1.0,
            text: text.into(),
            token_count: 10,
            ord: n as u32,
            version_key: format!("d{n}@1"),
            byte_range: (0, text.len()),
        }
    }

    #[test]
    fn quotes_the_covering_passage_with_its_citation() {
        let sources = vec![
            src(1, "The gzip module provides a simple interface. It is fast."),
            src(
                2,
                "The compresslevel argument is an integer from 0 to 9 controlling the level of compression. \
                 9 is slowest and produces the most compression. The default is 9.",
            ),
        ];
        let a = answer(
            "What compression level does gzip.GzipFile use by default?",
            &sources,
        );
        assert!(a.contains("The default is 9."), "{a}");
        assert!(a.contains("[2]"), "{a}");
        assert!(!is_decline(&a));
    }

    #[test]
    fn declines_when_nothing_covers_the_question() {
        let sources = vec![src(
            1,
            "The gzip module provides a simple interface to compress files.",
        )];
        let a = answer(
            "Does the server support SAML single sign-on with Okta?",
            &sources,
        );
        assert_eq!(a, DECLINE);
        assert!(is_decline(&a));
        assert_eq!(answer("what is it?", &[]), DECLINE);
    }

    #[test]
    fn sentences_split_on_boundaries_not_decimals() {
        let s = sentences(
            "# Title\nVersion 3.8 changed it. The default is 9. e.g. this stays\n- item one",
        );
        assert_eq!(
            s,
            vec![
                "Title",
                "Version 3.8 changed it.",
                "The default is 9. e.g. this stays",
                "item one"
            ]
        );
    }

    #[test]
    fn pieces_rebuild_the_text() {
        let t = "A quoted answer [1]\n\nmore";
        assert_eq!(pieces(t).concat(), t);
        assert!(pieces(t).len() >= 4);
    }
}
