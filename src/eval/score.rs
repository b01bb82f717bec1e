//! Scoring of a QA run, exactly as `../shared/eval/README.md` defines it (its `score.py` is the
//! reference, and `tests/it/eval.rs` checks that both give the same numbers on the same results).
//!
//! Text is compared in the *loose* form: NFKC, lower case, every run of characters that are not
//! letters or digits (underscore included) replaced by one space.

use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::LazyLock;
use unicode_normalization::UnicodeNormalization;

/// One question of a QA set (the `qa.jsonl` format).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct QaItem {
    pub id: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    pub question: String,
    #[serde(default)]
    pub answers: Vec<String>,
    #[serde(default)]
    pub evidence: OneOrMany,
    #[serde(default)]
    pub source: OneOrMany,
    #[serde(default)]
    pub unanswerable: bool,
}

/// A string or a list of strings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::None => vec![],
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

pub fn parse_qa(text: &str) -> anyhow::Result<Vec<QaItem>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: QaItem =
            serde_json::from_str(line).map_err(|e| anyhow::anyhow!("QA line {}: {e}", i + 1))?;
        out.push(item);
    }
    if out.is_empty() {
        anyhow::bail!("the QA set has no items");
    }
    Ok(out)
}

fn nfkc_lower(s: &str) -> String {
    s.nfkc()
        .filter(|&c| c != '\u{ad}')
        .collect::<String>()
        .to_lowercase()
}

/// The loose normal form.
pub fn loose(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut gap = false;
    for c in nfkc_lower(s).chars() {
        if c.is_alphanumeric() {
            if gap && !out.is_empty() {
                out.push(' ');
            }
            gap = false;
            out.push(c);
        } else {
            gap = true;
        }
    }
    out
}

fn squeeze(s: &str) -> String {
    nfkc_lower(s)
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect()
}

/// Does `expected` occur in `generated` on word boundaries (loose form)? Answers made only of
/// punctuation fall back to a whitespace-free substring match.
pub fn answer_matches(expected: &str, generated: &str) -> bool {
    let le = loose(expected);
    if !le.is_empty() {
        return format!(" {} ", loose(generated)).contains(&format!(" {le} "));
    }
    let se = squeeze(expected);
    !se.is_empty() && squeeze(generated).contains(&se)
}

static DECLINE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\b(i (do not|don't|dont) know|i'm not sure|i am not sure|not (found|present|covered|mentioned|available|specified|documented|stated) in|no (relevant )?information|(cannot|can't|could not|couldn't|unable to) (find|answer|determine|locate)|(does not|doesn't|do not|don't) (contain|mention|say|cover|include|provide|specify|document)|not enough (information|context)|no answer)\b",
    )
    .unwrap()
});

/// A declination recognised from the answer text, for results that do not say.
pub fn looks_declined(answer: &str) -> bool {
    answer.trim().is_empty() || DECLINE.is_match(answer)
}

/// What the system returned for one item.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub retrieved: Vec<String>,
    pub answer: String,
    pub declined: Option<bool>,
}

/// The verdict on one item.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Verdict {
    pub unanswerable: bool,
    /// hit@k for each k (answerable items only).
    pub hit: BTreeMap<usize, bool>,
    pub any_hit: BTreeMap<usize, bool>,
    /// The smallest k at which the item is a hit, within what was retrieved.
    pub rank: Option<usize>,
    pub declined: bool,
    /// Answerable: the answer matches and was not declined. Unanswerable: declined.
    pub correct: bool,
}

pub fn judge(item: &QaItem, out: &Outcome, ks: &[usize]) -> Verdict {
    let declined = out.declined.unwrap_or_else(|| looks_declined(&out.answer));
    if item.unanswerable {
        return Verdict {
            unanswerable: true,
            hit: BTreeMap::new(),
            any_hit: BTreeMap::new(),
            rank: None,
            declined,
            correct: declined,
        };
    }
    let chunks: Vec<String> = out.retrieved.iter().map(|c| loose(c)).collect();
    let evs: Vec<String> = item.evidence.to_vec().iter().map(|e| loose(e)).collect();
    // first[j]: the first rank (1-based) whose chunk holds evidence j.
    let first: Vec<Option<usize>> = evs
        .iter()
        .map(|e| {
            chunks
                .iter()
                .position(|c| c.contains(e.as_str()))
                .map(|p| p + 1)
        })
        .collect();
    let rank = if evs.is_empty() {
        None
    } else {
        first.iter().try_fold(0usize, |m, f| f.map(|f| m.max(f)))
    };
    let mut hit = BTreeMap::new();
    let mut any_hit = BTreeMap::new();
    for &k in ks {
        let found: Vec<bool> = first.iter().map(|f| f.is_some_and(|f| f <= k)).collect();
        hit.insert(k, !found.is_empty() && found.iter().all(|&b| b));
        any_hit.insert(k, found.iter().any(|&b| b));
    }
    let correct = !declined && item.answers.iter().any(|a| answer_matches(a, &out.answer));
    Verdict {
        unanswerable: false,
        hit,
        any_hit,
        rank,
        declined,
        correct,
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TypeScores {
    pub n: usize,
    /// Accuracy; for unanswerable items the share declined.
    pub accuracy: f64,
    pub hit: BTreeMap<usize, f64>,
}

/// The metrics of a run over a QA set.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    pub answerable: usize,
    pub unanswerable: usize,
    pub hit: BTreeMap<usize, f64>,
    pub any_hit: BTreeMap<usize, f64>,
    /// Mean reciprocal rank of the first position at which all evidence has been retrieved.
    pub mrr: f64,
    pub accuracy: f64,
    pub false_decline: f64,
    pub decline_rate: f64,
    pub per_type: BTreeMap<String, TypeScores>,
}

/// Aggregate verdicts. Items without an outcome count as misses (as in `score.py`).
pub fn aggregate(items: &[QaItem], verdicts: &[Verdict], ks: &[usize]) -> Scores {
    let mut s = Scores::default();
    let mut correct = 0usize;
    let mut false_decline = 0usize;
    let mut declined_unans = 0usize;
    let mut rr = 0.0;
    let mut hits: BTreeMap<usize, usize> = ks.iter().map(|&k| (k, 0)).collect();
    let mut any: BTreeMap<usize, usize> = hits.clone();
    let mut types: BTreeMap<String, (usize, usize, BTreeMap<usize, usize>)> = BTreeMap::new();
    for (item, v) in items.iter().zip(verdicts) {
        let t = types
            .entry(if item.kind.is_empty() {
                "?".into()
            } else {
                item.kind.clone()
            })
            .or_insert_with(|| (0, 0, ks.iter().map(|&k| (k, 0)).collect()));
        t.0 += 1;
        t.1 += v.correct as usize;
        if v.unanswerable {
            s.unanswerable += 1;
            declined_unans += v.declined as usize;
            continue;
        }
        s.answerable += 1;
        for &k in ks {
            *hits.get_mut(&k).unwrap() += v.hit[&k] as usize;
            *any.get_mut(&k).unwrap() += v.any_hit[&k] as usize;
            *t.2.get_mut(&k).unwrap() += v.hit[&k] as usize;
        }
        if let Some(r) = v.rank {
            rr += 1.0 / r as f64;
        }
        correct += v.correct as usize;
        false_decline += v.declined as usize;
    }
    let n = s.answerable.max(1) as f64;
    let u = s.unanswerable.max(1) as f64;
    s.hit = hits.iter().map(|(&k, &h)| (k, h as f64 / n)).collect();
    s.any_hit = any.iter().map(|(&k, &h)| (k, h as f64 / n)).collect();
    s.mrr = rr / n;
    s.accuracy = correct as f64 / n;
    s.false_decline = false_decline as f64 / n;
    s.decline_rate = declined_unans as f64 / u;
    s.per_type = types
        .into_iter()
        .map(|(name, (n, c, h))| {
            let unans = name == "unanswerable";
            (
                name,
                TypeScores {
                    n,
                    accuracy: c as f64 / n as f64,
                    hit: if unans {
                        BTreeMap::new()
                    } else {
                        h.into_iter()
                            .map(|(k, x)| (k, x as f64 / n as f64))
                            .collect()
                    },
                },
            )
        })
        .collect();
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(json: &str) -> QaItem {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn loose_form_folds_case_width_and_punctuation() {
        assert_eq!(
            loose("  F( x )¶ — Ｄｅｆａｕｌｔ_value!"),
            "f x default value"
        );
        assert_eq!(loose("soft\u{ad}hyphen"), "softhyphen");
        assert_eq!(loose("..."), "");
    }

    #[test]
    fn answers_match_on_word_boundaries() {
        assert!(answer_matches("2", "the limit is 2 digits"));
        assert!(!answer_matches("2", "in 2050"));
        assert!(answer_matches("gzip -9", "Use `gzip -9n` or GZIP -9."));
        assert!(answer_matches(
            "(',', ':')",
            "separators=(',', ':') by default"
        ));
        // Whitespace does not count for punctuation-only answers; other characters do.
        assert!(answer_matches("(',', ':')", "separators=(', ', ': ')"));
        assert!(!answer_matches("(',', ':')", "separators=(';', ':')"));
    }

    #[test]
    fn declines_are_recognised_from_text() {
        assert!(looks_declined(
            "I don't know: the documents do not contain the answer."
        ));
        assert!(looks_declined("   "));
        assert!(!looks_declined("The default is 4300 digits [1]."));
    }

    #[test]
    fn multi_passage_items_need_every_evidence_string() {
        let it = item(
            r#"{"id":"m","type":"multi","question":"q","answers":["143"],
                "evidence":["alpha beta","gamma delta"]}"#,
        );
        let out = Outcome {
            retrieved: vec!["x Alpha, beta y".into(), "z".into(), "GAMMA delta".into()],
            answer: "It is 143 [1].".into(),
            declined: Some(false),
        };
        let v = judge(&it, &out, &[1, 3]);
        assert!(!v.hit[&1]);
        assert!(v.any_hit[&1]);
        assert!(v.hit[&3]);
        assert_eq!(v.rank, Some(3));
        assert!(v.correct);
        let s = aggregate(&[it], &[v], &[1, 3]);
        assert!((s.mrr - 1.0 / 3.0).abs() < 1e-9);
        assert_eq!(s.hit[&3], 1.0);
    }

    #[test]
    fn unanswerable_items_score_declines_only() {
        let it = item(
            r#"{"id":"u","type":"unanswerable","question":"q","answers":[],"unanswerable":true}"#,
        );
        let yes = judge(
            &it,
            &Outcome {
                answer: "I don't know.".into(),
                ..Default::default()
            },
            &[5],
        );
        let no = judge(
            &it,
            &Outcome {
                answer: "It is 7.".into(),
                ..Default::default()
            },
            &[5],
        );
        assert!(yes.correct && !no.correct);
        let s = aggregate(&[it.clone(), it], &[yes, no], &[5]);
        assert_eq!(s.decline_rate, 0.5);
        assert_eq!(s.answerable, 0);
    }
}
