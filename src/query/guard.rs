//! The grounding guard for generated answers: every sentence of a model's answer must be
//! supported by the sources it cites. Support is lexical: the share of the sentence's content
//! words (stemmed, stopwords out) that occur in the cited sources (in all sources when the
//! sentence cites none). A model that invents ("the server supports SAML single sign-on [1]"
//! when source 1 never says so) fails it; the answer is then replaced by the extractive answer
//! or by a decline, and `done.guard` says which.

use super::engine::{citations_in, Source};
use super::extractive::{matches_term, sentences, stem, terms, words};
use serde::Serialize;
use std::collections::HashSet;

/// What the guard found and did.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct GuardReport {
    /// Sentences long enough to judge.
    pub checked: usize,
    /// Those without enough support in their sources, as written.
    pub unsupported: Vec<String>,
    /// `passed`, `fallback_extractive` (the answer was replaced by the extractive one),
    /// `declined` (replaced by a decline), or `flagged` (guard in `flag` mode: kept as is).
    pub action: String,
    /// The model's answer, when it was replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_answer: Option<String>,
}

/// Sentences with fewer content words than this are not judged ("Yes [1].").
const MIN_TERMS: usize = 3;

/// Sentences of `answer` whose content words are less than `min_support` covered by the
/// sources they cite. Returns (sentences judged, unsupported sentences).
pub fn check(answer: &str, sources: &[Source], min_support: f64) -> (usize, Vec<String>) {
    let stems_of =
        |s: &Source| -> HashSet<String> { words(&s.text).iter().map(|w| stem(w)).collect() };
    let per_source: Vec<HashSet<String>> = sources.iter().map(stems_of).collect();
    let all: HashSet<String> = per_source.iter().flatten().cloned().collect();
    let numbers_per_source: Vec<HashSet<String>> =
        sources.iter().map(|s| numbers(&s.text)).collect();
    let mut checked = 0;
    let mut unsupported = Vec::new();
    for sentence in sentences(answer) {
        if super::extractive::is_decline(&sentence) {
            continue;
        }
        // Citation markers are not content.
        let plain: String = strip_citations(&sentence);
        let t = terms(&plain);
        if t.len() < MIN_TERMS {
            continue;
        }
        checked += 1;
        let cited = citations_in(&sentence, sources.len());
        let pool: HashSet<String> = if cited.is_empty() {
            all.clone()
        } else {
            cited
                .iter()
                .flat_map(|&n| per_source[n - 1].iter().cloned())
                .collect()
        };
        let found = t.iter().filter(|w| matches_term(&pool, w)).count();
        // A number the sources do not contain is unsupported however many of the other words
        // match: "the UID of nobody is 100 [2]" shares most words with a source that says
        // 65534, and a wrong number is the worst kind of wrong answer.
        let source_numbers = |n: &String| {
            if cited.is_empty() {
                numbers_per_source.iter().any(|s| s.contains(n))
            } else {
                cited.iter().any(|&c| numbers_per_source[c - 1].contains(n))
            }
        };
        let invented_number = numbers(&without_list_marker(&plain))
            .iter()
            .any(|n| !source_numbers(n));
        if invented_number || (found as f64) < min_support * t.len() as f64 {
            unsupported.push(sentence.trim().to_string());
        }
    }
    (checked, unsupported)
}

/// The numbers written in `text`, digits only ("4,300" and "4300" are the same number; "1.5"
/// keeps its point).
fn numbers(text: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    let mut cur = String::new();
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c.is_ascii_digit() {
            cur.push(c);
        } else if (c == ',' || c == '.') && !cur.is_empty() && next_digit {
            if c == '.' {
                cur.push('.');
            }
        } else if !cur.is_empty() {
            out.insert(std::mem::take(&mut cur));
        }
    }
    if !cur.is_empty() {
        out.insert(cur);
    }
    out
}

/// The sentence without a leading list number ("2. Run the installer").
fn without_list_marker(s: &str) -> String {
    let t = s.trim_start();
    let digits = t.chars().take_while(|c| c.is_ascii_digit()).count();
    if digits > 0 && digits <= 2 && t[digits..].starts_with(['.', ')']) {
        t[digits + 1..].to_string()
    } else {
        t.to_string()
    }
}

fn strip_citations(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_cite = false;
    for c in s.chars() {
        match c {
            '[' => in_cite = true,
            ']' if in_cite => in_cite = false,
            _ if in_cite && (c.is_ascii_digit() || c == ',' || c == ' ') => {}
            _ => {
                in_cite = false;
                out.push(c);
            }
        }
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
            doc_name: "doc.md".into(),
            page: None,
            heading: None,
            score: 1.0,
            dense: None,
            sparse: None,
            text: text.into(),
            token_count: 10,
            ord: 0,
            version_key: "d@1".into(),
            byte_range: (0, 1),
        }
    }

    #[test]
    fn supported_sentences_pass_and_invented_ones_do_not() {
        let sources = vec![
            src(1, "The zephyr daemon listens on port 7412 by default."),
            src(2, "Snapshots of the catalog are written every 45 minutes."),
        ];
        let good = "The zephyr daemon listens on port 7412 by default [1]. Catalog snapshots are written every 45 minutes [2].";
        assert_eq!(check(good, &sources, 0.6), (2, vec![]));
        let bad = "The zephyr daemon listens on port 7412 [1]. It also supports SAML single sign-on through Okta [1].";
        let (n, un) = check(bad, &sources, 0.6);
        assert_eq!(n, 2);
        assert_eq!(un.len(), 1);
        assert!(un[0].contains("SAML"));
        // Citing the wrong source is not support either.
        let (_, un) = check("Snapshots are written every 45 minutes [1].", &sources, 0.6);
        assert_eq!(un.len(), 1);
    }

    #[test]
    fn a_number_the_sources_do_not_hold_is_unsupported() {
        let sources = vec![
            src(1, "The user nobody has UID 65534 in Debian Policy."),
            src(
                2,
                "The default limit is 4,300 digits; values up to 1.5 are allowed.",
            ),
        ];
        // Most words match, the number does not.
        let (_, un) = check(
            "Debian Policy gives the user nobody UID 100 [1].",
            &sources,
            0.6,
        );
        assert_eq!(un.len(), 1, "{un:?}");
        let (_, un) = check(
            "Debian Policy gives the user nobody UID 65534 [1].",
            &sources,
            0.6,
        );
        assert!(un.is_empty(), "{un:?}");
        // Thousands separators and decimals are the same number written differently.
        let (_, un) = check(
            "The default limit is 4300 digits and 1.5 is allowed [2].",
            &sources,
            0.6,
        );
        assert!(un.is_empty(), "{un:?}");
        // The number must be in the cited source, not just somewhere.
        let (_, un) = check(
            "Debian Policy gives the user nobody UID 4300 [1].",
            &sources,
            0.6,
        );
        assert_eq!(un.len(), 1);
        // List markers are not claims.
        let (_, un) = check(
            "2. Debian Policy gives the user nobody UID 65534 [1].",
            &sources,
            0.6,
        );
        assert!(un.is_empty(), "{un:?}");
    }

    #[test]
    fn short_sentences_and_declines_are_not_judged() {
        let sources = vec![src(1, "Port 7412.")];
        let (n, un) = check(
            "Yes [1]. I don't know: the documents do not contain the answer.",
            &sources,
            0.6,
        );
        assert_eq!((n, un.len()), (0, 0));
    }
}
