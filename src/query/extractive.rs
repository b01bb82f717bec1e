//! The extractive answerer: no model, no invention. It quotes the passage of the sources that
//! best covers the question (a window of one to three sentences), with its citation, and
//! declines when no passage covers enough of the question.

use super::engine::Source;
use serde::{Deserialize, Serialize};
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

pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

pub(crate) fn stem(w: &str) -> &str {
    for suf in ["ing", "ed", "es", "s"] {
        if w.len() > suf.len() + 3 && w.ends_with(suf) {
            return &w[..w.len() - suf.len()];
        }
    }
    w
}

pub(crate) fn terms(question: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    words(question)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w).to_string())
        .filter(|w| seen.insert(w.clone()))
        .collect()
}

/// Split text into sentences (and lines: headings, list items and table rows stand alone).
pub(crate) fn sentences(text: &str) -> Vec<String> {
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

pub(crate) fn matches_term(word_stems: &HashSet<String>, term: &str) -> bool {
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

/// How well the retrieved sources cover a question: the evidence behind answering or declining.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
#[serde(default)]
pub struct Grounding {
    /// Share of the question's terms (weighted by rarity among the sources' sentences) that
    /// the quoted passage covers.
    pub coverage: f64,
    /// Question words that occur in none of the sources.
    pub missing_terms: Vec<String>,
    /// Of those, the names (`pyenv`, `Poetry`, `JIT`: written as a name, or not a common word)
    /// that occur nowhere in the collection: the question is about something the documents
    /// never name, so it is not answered from them.
    pub unknown_terms: Vec<String>,
    /// Why the answer was declined, when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decline_reason: Option<String>,
}

/// Whether `word` is written like a name in the question: a capital letter anywhere but at the
/// start of the question, a digit, `_` or `.` in the token that holds it.
pub fn written_as_name(question: &str, word: &str) -> bool {
    question.split_whitespace().enumerate().any(|(i, raw)| {
        let tok = raw.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_'));
        if !words(tok).iter().any(|w| w == word) {
            return false;
        }
        tok.chars()
            .enumerate()
            .any(|(j, c)| c.is_uppercase() && (j > 0 || i > 0))
            || tok.contains('_')
            || tok.contains('.')
            || tok.chars().any(|c| c.is_ascii_digit())
    })
}

/// Question words (not stopwords) that occur in none of the sources, as written (lower case).
pub fn missing_words(question: &str, sources: &[Source]) -> Vec<String> {
    let present: HashSet<String> = sources
        .iter()
        .flat_map(|s| words(&s.text))
        .map(|w| stem(&w).to_string())
        .collect();
    let mut seen = HashSet::new();
    words(question)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .filter(|w| !matches_term(&present, stem(w)))
        .filter(|w| seen.insert(w.clone()))
        .collect()
}

/// The answer text, with `[n]` citations, or [`DECLINE`].
pub fn answer(question: &str, sources: &[Source]) -> String {
    answer_with_grounding(question, sources, vec![], vec![]).0
}

/// The answer and the evidence for it. Declines when no passage covers enough of the question,
/// or when the question names something the collection never mentions (`unknown_terms`, found
/// by the caller among [`missing_words`]).
pub fn answer_with_grounding(
    question: &str,
    sources: &[Source],
    missing_terms: Vec<String>,
    unknown_terms: Vec<String>,
) -> (String, Grounding) {
    let passages = best_passages(question, sources);
    let mut g = Grounding {
        coverage: passages.first().map(|p| p.coverage).unwrap_or(0.0),
        missing_terms,
        unknown_terms,
        decline_reason: None,
    };
    let Some(best) = passages.first() else {
        g.decline_reason = Some("no source shares a term with the question".into());
        return (DECLINE.to_string(), g);
    };
    if best.coverage < MIN_COVERAGE {
        g.decline_reason = Some(format!(
            "the best passage covers {:.0}% of the question (needs {:.0}%)",
            best.coverage * 100.0,
            MIN_COVERAGE * 100.0
        ));
        return (DECLINE.to_string(), g);
    }
    if !g.unknown_terms.is_empty() {
        g.decline_reason = Some(format!(
            "the documents never mention {}",
            g.unknown_terms.join(", ")
        ));
        return (DECLINE.to_string(), g);
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
    (out, g)
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
            dense: None,
            sparse: None,
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
    fn declines_a_question_about_something_the_collection_never_names() {
        let sources = vec![src(
            1,
            "Install the tool with the package manager. It needs Python 3.",
        )];
        let q = "How do I install pyenv with the package manager?";
        let missing = missing_words(q, &sources);
        assert_eq!(missing, vec!["pyenv".to_string()]);
        // Covered well enough on its own words, but `pyenv` is unknown to the collection.
        let (a, g) = answer_with_grounding(q, &sources, missing.clone(), missing);
        assert_eq!(a, DECLINE);
        assert!(g.coverage >= MIN_COVERAGE, "{g:?}");
        assert!(g.decline_reason.unwrap().contains("pyenv"));
        // Known elsewhere in the collection: answered from the best passage.
        let (a, g) = answer_with_grounding(q, &sources, vec!["pyenv".into()], vec![]);
        assert!(a.contains("package manager") && a.ends_with("[1]"), "{a}");
        assert!(g.decline_reason.is_none());
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
