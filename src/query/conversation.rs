//! Conversation helpers: whether a follow-up refers back (and the rule-based rewrite used when
//! no chat model is configured), history within a token budget, and the extractive summary.

use crate::catalog::TurnRow;
use kb_ingest::TokenCounter;

/// Words that point back at an earlier turn.
const REFERENCES: &[&str] = &[
    "it", "its", "it's", "itself", "that", "this", "they", "them", "their", "theirs", "those",
    "these", "he", "she", "his", "her", "there", "former", "latter", "above",
];

/// Question words and fillers that carry no topic.
const STOPWORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "by", "can", "could", "did", "do", "does",
    "for", "from", "get", "how", "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or",
    "should", "so", "tell", "than", "that", "the", "then", "this", "to", "use", "used", "uses",
    "using", "was", "what", "whats", "when", "where", "which", "who", "why", "will", "with",
    "would", "you", "your", "there", "they", "them", "their", "these", "those", "same", "also",
    "default", "value", "much", "many",
];

fn words(text: &str) -> Vec<String> {
    text.split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .trim_end_matches('.')
                .to_string()
        })
        .filter(|w| !w.is_empty())
        .collect()
}

/// Whether a follow-up refers back to the conversation: a pronoun or deictic word ("its
/// default", "the same", "that one"), or so short it cannot stand alone ("and zlib?").
pub fn refers_back(question: &str) -> bool {
    let ws: Vec<String> = words(question).iter().map(|w| w.to_lowercase()).collect();
    if ws.len() <= 3 {
        return true;
    }
    let lower = question.to_lowercase();
    lower.contains("the same") || ws.iter().any(|w| REFERENCES.contains(&w.as_str()))
}

/// The topic words of `question`: not stopwords, in order, without repeats.
pub fn key_terms(question: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for w in words(question) {
        let l = w.to_lowercase();
        if STOPWORDS.contains(&l.as_str()) || out.iter().any(|o| o.to_lowercase() == l) {
            continue;
        }
        out.push(w);
    }
    out
}

/// The deterministic rewrite: the follow-up plus the key terms of the previous (standalone)
/// question that it does not already contain.
pub fn rule_rewrite(question: &str, previous: &str) -> String {
    let have: Vec<String> = words(question).iter().map(|w| w.to_lowercase()).collect();
    let add: Vec<String> = key_terms(previous)
        .into_iter()
        .filter(|t| !have.contains(&t.to_lowercase()))
        .collect();
    if add.is_empty() {
        return question.trim().to_string();
    }
    format!("{} ({})", question.trim(), add.join(" "))
}

/// The first sentence of `text` (at most 300 characters).
pub fn first_sentence(text: &str) -> String {
    let t = text.trim();
    let end = t
        .char_indices()
        .find(|(i, c)| {
            matches!(c, '.' | '!' | '?')
                && t[i + c.len_utf8()..]
                    .chars()
                    .next()
                    .is_none_or(char::is_whitespace)
        })
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(t.len());
    let s = &t[..end];
    if s.chars().count() > 300 {
        let cut: String = s.chars().take(300).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

/// Cut `text` to at most `max` tokens of `counter`.
pub fn truncate_tokens(text: &str, max: usize, counter: &dyn TokenCounter) -> String {
    let offs = counter.token_offsets(text);
    if offs.len() <= max {
        return text.to_string();
    }
    if max == 0 {
        return String::new();
    }
    let end = offs[max - 1].1;
    format!("{}...", &text[..end])
}

/// The extractive summary: the earlier summary, then each turn's question and the first
/// sentence of its answer; the oldest lines go first when over `max` tokens.
pub fn extractive_summary(
    previous: Option<&str>,
    turns: &[TurnRow],
    max: usize,
    counter: &dyn TokenCounter,
) -> String {
    let mut lines: Vec<String> = previous
        .map(|p| p.lines().map(str::to_string).collect())
        .unwrap_or_default();
    for t in turns {
        lines.push(format!(
            "Q: {} A: {}",
            t.question.trim(),
            first_sentence(&t.answer)
        ));
    }
    while lines.len() > 1 && counter.count(&lines.join("\n")) > max {
        lines.remove(0);
    }
    truncate_tokens(&lines.join("\n"), max, counter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_ups_that_refer_back_are_rewritten_others_are_not() {
        assert!(refers_back("What about its default?"));
        assert!(refers_back("and zlib?"));
        assert!(refers_back("Is that the same for the bash shell history?"));
        assert!(!refers_back(
            "What is the default precision of the decimal module?"
        ));
        let prev = "What compression level does gzip.GzipFile use by default?";
        assert_eq!(
            rule_rewrite("What about its maximum?", prev),
            "What about its maximum? (compression level gzip.GzipFile)"
        );
        assert_eq!(
            key_terms("How many lanterns hang in the east hall?"),
            ["lanterns", "hang", "east", "hall"]
        );
    }

    #[test]
    fn first_sentences_and_budgets() {
        assert_eq!(first_sentence("Nine [1]. Then more."), "Nine [1].");
        assert_eq!(first_sentence("v3.11 is out. Yes"), "v3.11 is out.");
        let c = crate::models::ApproxCounter;
        let turns: Vec<TurnRow> = (0..20)
            .map(|i| TurnRow {
                n: i,
                question: format!("question number {i} about lanterns"),
                standalone_question: String::new(),
                answer: format!("Answer {i} is long. Second sentence dropped."),
                citations: serde_json::Value::Null,
                sources: serde_json::Value::Null,
                created_at: String::new(),
            })
            .collect();
        let s = extractive_summary(None, &turns, 60, &c);
        assert!(c.count(&s) <= 61, "{s}");
        assert!(s.contains("question number 19") && !s.contains("Second sentence"));
        assert!(
            !s.contains("question number 0 "),
            "oldest dropped first: {s}"
        );
    }
}
