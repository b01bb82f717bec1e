//! Context budgeting: what the model window leaves after the prompt, the question and the
//! answer reserve is filled with sources by score; near-duplicates are dropped and adjacent
//! chunks of the same document are merged. The manifest says what went in and what did not.

use super::engine::Source;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// Tokens of the fixed instructions around the sources (measured on the prompt, rounded up).
const PROMPT_OVERHEAD: usize = 220;
/// Per-source framing (`[n] name, page ...`).
const PER_SOURCE_OVERHEAD: usize = 16;
/// The extractive answerer reads no more than this (it has no window, but a bound keeps it fast).
const EXTRACTIVE_BUDGET: usize = 4096;

#[derive(Debug, Clone, Serialize, Deserialize, Default, utoipa::ToSchema)]
pub struct Manifest {
    pub budget_tokens: usize,
    pub used_tokens: usize,
    pub included: Vec<Included>,
    pub dropped: Vec<Dropped>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Included {
    pub n: usize,
    pub chunk_ids: Vec<String>,
    pub tokens: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Dropped {
    pub chunk_id: String,
    pub reason: String,
}

/// Tokens available for sources.
pub fn budget(context_window: usize, answer_reserve: usize, question: &str, llm: bool) -> usize {
    if !llm {
        return EXTRACTIVE_BUDGET;
    }
    // Question tokens, estimated high (about 3 bytes per token).
    let q = question.len() / 3 + 8;
    context_window.saturating_sub(answer_reserve + PROMPT_OVERHEAD + q)
}

fn shingles(text: &str) -> HashSet<u64> {
    use std::hash::{Hash, Hasher};
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase())
        .collect();
    words
        .windows(3)
        .map(|w| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect()
}

fn near_duplicate(a: &HashSet<u64>, b: &HashSet<u64>) -> bool {
    if a.is_empty() || b.is_empty() {
        return false;
    }
    let inter = a.intersection(b).count();
    let small = a.len().min(b.len());
    inter as f64 / small as f64 >= 0.9
}

/// Pack ranked hits into `budget` tokens. Returns the sources renumbered from 1 in rank order.
pub fn pack(hits: Vec<Source>, budget: usize) -> (Vec<Source>, Manifest) {
    let mut manifest = Manifest {
        budget_tokens: budget,
        ..Default::default()
    };
    let mut out: Vec<Source> = Vec::new();
    let mut ids: Vec<Vec<String>> = Vec::new();
    let mut prints: Vec<HashSet<u64>> = Vec::new();
    let mut used = 0usize;
    for hit in hits {
        let sh = shingles(&hit.text);
        if let Some(i) = prints.iter().position(|p| near_duplicate(p, &sh)) {
            manifest.dropped.push(Dropped {
                chunk_id: hit.chunk_id,
                reason: format!("near-duplicate of source [{}]", i + 1),
            });
            continue;
        }
        // Adjacent chunk of an included one (same document version)? Merge, minus the overlap.
        let adjacent = out.iter().position(|s| {
            s.version_key == hit.version_key && (s.ord + 1 == hit.ord || hit.ord + 1 == s.ord)
        });
        let cost = hit.token_count as usize + PER_SOURCE_OVERHEAD;
        if let Some(i) = adjacent {
            let s = &out[i];
            let (first_range, second, first_text) = if s.ord < hit.ord {
                (s.byte_range, &hit, s.text.clone())
            } else {
                (hit.byte_range, s, hit.text.clone())
            };
            let overlap = first_range.1.saturating_sub(second.byte_range.0);
            let tail = second.text.get(overlap.min(second.text.len())..);
            if let Some(tail) = tail {
                let tail_tokens = (hit.token_count as usize)
                    .saturating_mul(tail.len())
                    .checked_div(hit.text.len().max(1))
                    .unwrap_or(0);
                if used + tail_tokens <= budget {
                    let merged = format!("{first_text}{tail}");
                    let s = &mut out[i];
                    if hit.ord < s.ord {
                        // The merged source starts where the earlier chunk starts.
                        s.ord = hit.ord;
                        s.byte_range.0 = hit.byte_range.0;
                        s.chunk_id.clone_from(&hit.chunk_id);
                        s.page = hit.page;
                        s.heading.clone_from(&hit.heading);
                    } else {
                        s.byte_range.1 = hit.byte_range.1;
                    }
                    s.text = merged;
                    s.token_count += tail_tokens as u32;
                    s.score = s.score.max(hit.score);
                    ids[i].push(hit.chunk_id.clone());
                    prints[i].extend(sh);
                    used += tail_tokens;
                    manifest.dropped.push(Dropped {
                        chunk_id: hit.chunk_id,
                        reason: format!("merged into source [{}] (adjacent chunk)", i + 1),
                    });
                    continue;
                }
            }
        }
        if used + cost > budget {
            manifest.dropped.push(Dropped {
                chunk_id: hit.chunk_id,
                reason: "over the context budget".into(),
            });
            continue;
        }
        used += cost;
        ids.push(vec![hit.chunk_id.clone()]);
        prints.push(sh);
        out.push(hit);
    }
    for (i, s) in out.iter_mut().enumerate() {
        s.n = i + 1;
        manifest.included.push(Included {
            n: i + 1,
            chunk_ids: ids[i].clone(),
            tokens: s.token_count as usize,
        });
    }
    manifest.used_tokens = used;
    (out, manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(
        id: &str,
        key: &str,
        ord: u32,
        range: (usize, usize),
        text: &str,
        tokens: u32,
    ) -> Source {
        Source {
            dense: None,
            sparse: None,
            n: 0,
            chunk_id: id.into(),
            doc_id: "d".into(),
            doc_name: "doc".into(),
            page: None,
            heading: None,
            score: 1.0,
            text: text.into(),
            token_count: tokens,
            ord,
            version_key: key.into(),
            byte_range: range,
        }
    }

    #[test]
    fn packs_by_budget_drops_duplicates_merges_neighbours() {
        let doc = "alpha beta gamma delta epsilon zeta eta theta iota kappa";
        let a = src("a", "d@1", 0, (0, 28), &doc[0..28], 5);
        // b overlaps a by "delta epsilon" (bytes 17..28).
        let b = src("b", "d@1", 1, (17, doc.len()), &doc[17..], 7);
        let dup = src("dup", "x@1", 0, (0, 28), &doc[0..28], 5);
        let big = src(
            "big",
            "y@1",
            3,
            (0, 10),
            "other words entirely here now",
            10_000,
        );
        let (out, m) = pack(vec![a, b, dup, big], 200);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, doc, "merged without repeating the overlap");
        assert_eq!(
            m.included[0].chunk_ids,
            vec!["a".to_string(), "b".to_string()]
        );
        let reasons: Vec<(&str, &str)> = m
            .dropped
            .iter()
            .map(|d| (d.chunk_id.as_str(), d.reason.as_str()))
            .collect();
        assert!(reasons
            .iter()
            .any(|(id, r)| *id == "dup" && r.contains("near-duplicate")));
        assert!(reasons
            .iter()
            .any(|(id, r)| *id == "big" && r.contains("budget")));
        assert!(m.used_tokens <= 200);
    }

    #[test]
    fn budget_leaves_room_for_answer() {
        let b = budget(8192, 768, "what is it?", true);
        assert!(b < 8192 - 768 && b > 6000);
        assert_eq!(budget(100, 768, "q", true), 0);
    }
}
