//! Entries as quoted: a term line or heading introduces what follows it.

use super::{output, Segment};

/// An entry of at most this many words is quoted whole, whichever of its sentences matched.
const WHOLE_ENTRY_WORDS: usize = 60;

/// `text` introduced by its entry's term line.
pub(super) fn labelled(label: &str, text: &str) -> String {
    if label.ends_with(':') {
        format!("{label} {text}")
    } else {
        format!("{label}: {text}")
    }
}

/// The whole of a short entry (a term line or heading and its description), as quoted: in a
/// definition list the entry is the unit of meaning, and what the question asks for (the value
/// of a default, a limit) often stands in the sentence after the one that matches its words.
/// None for prose, long entries, and entries with a sentence that is never quoted.
pub(super) fn whole_entry(seg: &Segment) -> Option<String> {
    let label = seg.label.as_ref()?;
    let body: Vec<&str> = seg
        .units
        .iter()
        .skip(1)
        .map(|(u, _)| u.text.as_str())
        .collect();
    if body.len() < 2 || seg.units.iter().any(|(u, _)| !output::quotable(&u.text)) {
        return None;
    }
    let text = body.join(" ");
    (text.split_whitespace().count() <= WHOLE_ENTRY_WORDS).then(|| labelled(label, &text))
}
