//! The extractive answerer: no model, no invention. It quotes the passage of the sources that
//! best covers the question (a window of one to three sentences), with its citation, and
//! declines when no passage covers enough of the question.

mod entry;
mod output;

use entry::{labelled, whole_entry};
pub use output::{is_decline, pieces};

use super::engine::Source;
use qdrant_rust_stemmers::{Algorithm, Stemmer};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

pub const DECLINE: &str = "I don't know: the documents do not contain the answer.";

/// Least share of the question's (IDF-weighted) terms a passage must cover to be quoted.
const MIN_COVERAGE: f64 = 0.34;
const MAX_WINDOW_WORDS: usize = 90;
/// Wrapped lines are joined into one paragraph up to this many words (code is not prose).
const MAX_JOINED_WORDS: usize = 80;

/// Function words, and the words that only give a question its form ("tell me", "give",
/// "called"): never content. Content words common in a collection ("python" in Python's
/// documentation) are not listed; IDF over the sources weighs them down instead.
const STOPWORDS: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "if", "of", "to", "in", "on", "at", "by", "for", "with",
    "from", "as", "is", "are", "was", "were", "be", "been", "being", "it", "its", "this", "that",
    "these", "those", "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "do",
    "does", "did", "doing", "can", "could", "should", "would", "will", "shall", "may", "might",
    "must", "i", "you", "he", "she", "we", "they", "me", "my", "your", "our", "their", "there",
    "here", "than", "then", "so", "such", "into", "about", "over", "under", "any", "all", "some",
    "no", "not", "only", "own", "same", "too", "very", "s", "t", "just", "also", "has", "have",
    "had", "having", "am", "up", "out", "tell", "give", "called",
];

pub(crate) fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect()
}

/// The Snowball English stem of a lower-case word: the stemmer Qdrant's BM25 side uses, so
/// retrieval, the answerer and the guard judge a word the same way.
pub(crate) fn stem(w: &str) -> String {
    static STEMMER: LazyLock<Stemmer> = LazyLock::new(|| Stemmer::create(Algorithm::English));
    STEMMER.stem(w).into_owned()
}

pub(crate) fn terms(question: &str) -> Vec<String> {
    let mut seen = HashSet::new();
    words(question)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
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
        if !line.is_empty() {
            out.extend(split_sentences(line));
        }
    }
    out
}

/// One sentence of a source, with the entry (definition-list item or section) it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unit {
    pub text: String,
    /// Index of the segment the sentence belongs to: a window never spans two.
    pub segment: usize,
    /// The sentence is a term line or a heading (the start of an entry), not a statement.
    pub label: bool,
}

/// Ends like a sentence or a clause (a line that ends so is prose, not a term).
fn ends_prose(line: &str) -> bool {
    line.ends_with(['.', '!', '?', ':', ';', ','])
}

/// A line that could name an entry: one short phrase without closing punctuation
/// (`max_workers`, `name (integer)`, `HISTSIZE`, `65534:`), or a call signature
/// (`open(file, mode='r')`).
fn is_termish(line: &str) -> bool {
    let n = line.split_whitespace().count();
    let short_colon = n <= 2 && line.ends_with(':') && !line[..line.len() - 1].ends_with(':');
    line.chars().any(|c| c.is_alphanumeric())
        && (!ends_prose(line) || short_colon)
        && split_sentences(line).len() == 1
        && (n <= 6 || (n <= 30 && line.contains('(') && line.ends_with(')')))
}

/// A token written as an identifier rather than a word: with `_`, `.` or a digit inside, a
/// capital after its first letter (`GzipFile`, `HISTSIZE`), or a leading `-` (`--jobs`).
pub(crate) fn is_identifier(tok: &str) -> bool {
    let tok = tok.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_' || c == '-'));
    let core = tok.trim_start_matches('-');
    // A version or page number (`4.6.2.0`, `86`) is not a name.
    if !core.chars().any(|c| c.is_alphabetic()) {
        return false;
    }
    (tok.starts_with('-') && core.chars().next().is_some_and(|c| c.is_alphanumeric()))
        || core.contains('_')
        || core.trim_end_matches('.').contains('.')
        || core.chars().any(|c| c.is_ascii_digit())
        || core.chars().skip(1).any(|c| c.is_uppercase())
}

/// Split a source into sentences grouped in segments. A heading, or a term line followed by
/// its description, starts a new segment; a blank line ends such an entry (except right after
/// its term, whose description may follow a blank line), while paragraphs of plain prose stay
/// one segment. Lines wrapped inside a sentence (a line without
/// closing punctuation followed by one starting in lower case, as PDF text is) are joined.
pub(crate) fn units(text: &str) -> Vec<Unit> {
    // Non-blank lines: (text, heading, blank line before).
    let mut lines: Vec<(String, bool, bool)> = Vec::new();
    let mut blank = false;
    for raw in text.split('\n') {
        let t = raw.trim();
        let heading = t.starts_with('#');
        let line = t.trim_start_matches('#').trim_start_matches("- ").trim();
        if line.is_empty() {
            blank = true;
            continue;
        }
        lines.push((line.to_string(), heading, blank));
        blank = false;
    }
    // Line `i + 1` continues line `i` (a paragraph wrapped mid-sentence).
    let continues = |i: usize| {
        lines.get(i + 1).is_some_and(|(next, _, blank)| {
            !blank && !ends_prose(&lines[i].0) && next.starts_with(|c: char| c.is_lowercase())
        })
    };
    // A term line: termish, not a row of a run of short lines (a table), not wrapped on into
    // the next line, and followed by prose (a statement, or a wrapped paragraph).
    let label: Vec<bool> = (0..lines.len())
        .map(|i| {
            let (line, heading, blank) = &lines[i];
            if *heading {
                return true;
            }
            let in_run = i > 0 && !blank && is_termish(&lines[i - 1].0);
            let described = lines
                .get(i + 1)
                .is_some_and(|(next, _, _)| !is_termish(next) || continues(i + 1));
            // Across a blank line only a name or a number is taken for a term (`max_workers`,
            // `65534:`), not a running page header (`Debian Policy Manual, Release 4.6.2.0`).
            let named = line.split_whitespace().any(is_identifier)
                || line
                    .trim_end_matches(':')
                    .chars()
                    .all(|c| c.is_ascii_digit() || c == '-');
            let apart = lines.get(i + 1).is_some_and(|next| next.2);
            is_termish(line) && !in_run && !continues(i) && described && (!apart || named)
        })
        .collect();
    let mut out = Vec::new();
    let mut segment = 0usize;
    let mut after_label = false;
    // Whether the current segment is an entry (it starts with a term line or a heading): a
    // blank line ends an entry, but paragraphs of plain prose read on into each other, so a
    // window may join the sentence before a blank line and the one after it.
    let mut in_entry = false;
    let mut i = 0;
    while i < lines.len() {
        let (line, _, blank_before) = &lines[i];
        if !out.is_empty() && (label[i] || (*blank_before && in_entry && !after_label)) {
            segment += 1;
            in_entry = false;
        }
        if label[i] {
            in_entry = true;
            out.push(Unit {
                text: line.clone(),
                segment,
                label: true,
            });
            after_label = true;
            i += 1;
            continue;
        }
        after_label = false;
        // Join the lines of one wrapped paragraph.
        let mut para = line.clone();
        while let Some((next, _, _)) = lines.get(i + 1) {
            let wrapped = continues(i)
                && !label[i + 1]
                && !ends_prose(&para)
                && para.split_whitespace().count() < MAX_JOINED_WORDS;
            if !wrapped {
                break;
            }
            para.push(' ');
            para.push_str(next);
            i += 1;
        }
        for s in split_sentences(&para) {
            out.push(Unit {
                text: s,
                segment,
                label: false,
            });
        }
        i += 1;
    }
    out
}

/// Split one line into sentences at `. ` (or `?`, `!`) before a capital, a digit, `"` or `(`.
fn split_sentences(line: &str) -> Vec<String> {
    let mut out = Vec::new();
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
    out
}

struct Passage {
    source: usize,
    /// The segment of the source, and the sentences of it the window spans.
    segment: usize,
    span: (usize, usize),
    text: String,
    score: f64,
    coverage: f64,
    /// The question's terms the passage covers, with their coverage weights (share of all).
    covered: Vec<(String, f64)>,
}

impl Passage {
    fn overlaps(&self, other: &Passage) -> bool {
        self.source == other.source
            && self.segment == other.segment
            && self.span.0 < other.span.1
            && other.span.0 < self.span.1
    }
}

pub(crate) fn matches_term(word_stems: &HashSet<String>, term: &str) -> bool {
    word_stems.contains(term)
        || (term.len() >= 5
            && word_stems
                .iter()
                .any(|w| w.len() >= 5 && (w.starts_with(term) || term.starts_with(w.as_str()))))
}

fn stems_of(text: &str) -> HashSet<String> {
    words(text).iter().map(|w| stem(w)).collect()
}

/// The question's terms written as identifiers (`max_workers`, `HISTSIZE`, `os.path.join`,
/// `--jobs`), stemmed: the entity asked about.
fn entity_terms(question: &str) -> HashSet<String> {
    question
        .split_whitespace()
        .filter(|t| is_identifier(t))
        .flat_map(words)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .map(|w| stem(&w))
        .collect()
}

/// How much more a term naming the entity asked about weighs than a common one.
const ENTITY_WEIGHT: f64 = 3.0;

/// A segment of a source: its sentences and the words of the term or heading it is about.
struct Segment {
    units: Vec<(Unit, HashSet<String>)>,
    /// The segment's term line or heading, when it starts with one.
    label: Option<String>,
    /// The words the segment is about: its label's, or an identifier its text starts with
    /// (`HISTSIZE The maximum number...`).
    key: HashSet<String>,
}

fn segments(text: &str) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    let mut last = usize::MAX;
    for u in units(text) {
        let set = stems_of(&u.text);
        if u.segment != last {
            last = u.segment;
            let (label, key) = if u.label {
                (Some(u.text.clone()), set.clone())
            } else {
                let first = u.text.split_whitespace().next().unwrap_or("");
                let key = if is_identifier(first) {
                    stems_of(first)
                } else {
                    HashSet::new()
                };
                (None, key)
            };
            out.push(Segment {
                units: vec![],
                label,
                key,
            });
        }
        if let Some(seg) = out.last_mut() {
            seg.units.push((u, set));
        }
    }
    out
}

fn best_passages(question: &str, sources: &[Source]) -> Vec<Passage> {
    let q = terms(question);
    if q.is_empty() || sources.is_empty() {
        return vec![];
    }
    let entities = entity_terms(question);
    let per_source: Vec<Vec<Segment>> = sources.iter().map(|s| segments(&s.text)).collect();
    // The section each source lies in: its heading path counts toward which passage is
    // quoted (the entity asked about is often named only there), not toward coverage.
    let sections: Vec<HashSet<String>> = sources
        .iter()
        .map(|s| s.heading.as_deref().map(stems_of).unwrap_or_default())
        .collect();
    // IDF of each question term over all sentences: rare terms matter more; terms naming the
    // entity asked about matter most.
    let all_units = || per_source.iter().flatten().flat_map(|seg| seg.units.iter());
    let n_sent = all_units().count().max(1) as f64;
    // `weight` measures coverage (what the decline threshold reads); `rank_weight` orders the
    // passages and counts the entity's terms more.
    let mut weight: HashMap<&str, f64> = HashMap::new();
    let mut rank_weight: HashMap<&str, f64> = HashMap::new();
    for t in &q {
        let df = all_units().filter(|(_, set)| matches_term(set, t)).count() as f64;
        let idf = (1.0 + n_sent / (1.0 + df)).ln().max(0.1);
        weight.insert(t, idf);
        let boost = if entities.contains(t) {
            ENTITY_WEIGHT
        } else {
            1.0
        };
        rank_weight.insert(t, idf * boost);
    }
    let total: f64 = weight.values().sum();
    let rank_total: f64 = rank_weight.values().sum();
    let mut out = Vec::new();
    for (si, segs) in per_source.iter().enumerate() {
        for (gi, seg) in segs.iter().enumerate() {
            let whole = whole_entry(seg);
            for start in 0..seg.units.len() {
                let mut text = String::new();
                let mut set: HashSet<String> = seg.key.clone();
                let mut statements = 0;
                for (k, (unit, stems)) in seg.units.iter().enumerate().skip(start).take(3) {
                    // Questions and instructions to a model are never quoted as answers.
                    if !output::quotable(&unit.text) {
                        break;
                    }
                    let n_words =
                        text.split_whitespace().count() + unit.text.split_whitespace().count();
                    if !text.is_empty() && n_words > MAX_WINDOW_WORDS {
                        break;
                    }
                    if !text.is_empty() {
                        text.push(' ');
                    }
                    text.push_str(&unit.text);
                    set.extend(stems.iter().cloned());
                    if !unit.label {
                        statements += 1;
                    }
                    // A window is quoted only when it ends on a statement, never on a bare
                    // term line or heading.
                    if unit.label || statements == 0 {
                        continue;
                    }
                    let covered: Vec<&str> = q
                        .iter()
                        .filter(|t| matches_term(&set, t))
                        .map(|t| t.as_str())
                        .collect();
                    let coverage = covered.iter().map(|t| weight[t]).sum::<f64>() / total;
                    let ranked = q
                        .iter()
                        .filter(|t| matches_term(&set, t) || matches_term(&sections[si], t))
                        .map(|t| rank_weight[t.as_str()])
                        .sum::<f64>()
                        / rank_total;
                    let n = text.split_whitespace().count() as f64;
                    let rank_bonus = 0.08 / (1.0 + si as f64);
                    let score = ranked + rank_bonus - 0.0025 * n;
                    // A passage from inside an entry names the entry's term first; a short
                    // entry is quoted whole.
                    let (quoted, span) = match (&whole, &seg.label) {
                        (Some(w), _) => (w.clone(), (0, seg.units.len())),
                        (None, Some(l)) if start > 0 => (labelled(l, &text), (start, k + 1)),
                        _ => (text.clone(), (start, k + 1)),
                    };
                    out.push(Passage {
                        source: si,
                        segment: gi,
                        span,
                        text: quoted,
                        score,
                        coverage,
                        covered: covered
                            .iter()
                            .map(|t| (t.to_string(), weight[t] / total))
                            .collect(),
                    });
                }
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
        .map(|w| stem(&w))
        .collect();
    let mut seen = HashSet::new();
    words(question)
        .into_iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .filter(|w| !matches_term(&present, &stem(w)))
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
    let all = best_passages(question, sources);
    // The best passage that covers enough of the question; if none does, the best one (to
    // report its coverage and decline).
    let passages: Vec<&Passage> = if all.iter().any(|p| p.coverage >= MIN_COVERAGE) {
        all.iter().filter(|p| p.coverage >= MIN_COVERAGE).collect()
    } else {
        all.iter().collect()
    };
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
    if let Some(second) = second_passage(best, &all) {
        out.push_str(&format!(
            "\n\n{} [{}]",
            second.text, sources[second.source].n
        ));
    }
    (out, g)
}

/// Least share of the question a second passage must add to what the first one covers.
const MIN_GAIN: f64 = 0.15;

/// The passage quoted after the best one, if any: the one that best covers the part of the
/// question the best passage leaves out (questions that need two facts; it needs no share of
/// the whole question of its own, only a share of the rest); else one from another source
/// that is nearly as good.
fn second_passage<'a>(best: &Passage, passages: &'a [Passage]) -> Option<&'a Passage> {
    let distinct = |p: &&Passage| {
        !p.overlaps(best) && !best.text.contains(&p.text) && !p.text.contains(&best.text)
    };
    let has = |t: &str| best.covered.iter().any(|(c, _)| c == t);
    let gain = |p: &Passage| -> f64 {
        p.covered
            .iter()
            .filter(|(t, _)| !has(t))
            .map(|(_, w)| w)
            .sum()
    };
    let complement = passages
        .iter()
        .filter(distinct)
        .filter(|p| gain(p) >= MIN_GAIN)
        .max_by(|a, b| (gain(a) + a.score).total_cmp(&(gain(b) + b.score)));
    complement.or_else(|| {
        passages.iter().filter(distinct).find(|p| {
            p.source != best.source && p.score >= best.score * 0.85 && p.coverage >= MIN_COVERAGE
        })
    })
}

#[cfg(test)]
mod tests;
