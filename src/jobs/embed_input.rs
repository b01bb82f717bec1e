//! What a chunk is embedded as.

/// What a chunk is embedded as, and the key its vector is cached under: its heading path (the
/// document's title and sections, as BM25 also indexes it) then its text, so a passage that
/// never repeats what its section is about still carries it; or the text alone. The key is
/// the content hash, or one derived from it and the heading: the vectors differ.
pub(super) fn embed_input(c: &kb_ingest::Chunk, headings: bool) -> (String, String) {
    match c.heading.as_deref() {
        Some(h) if headings && !h.trim().is_empty() => {
            use sha2::{Digest, Sha256};
            let key = hex::encode(Sha256::digest(format!("heading\n{h}\n{}", c.content_hash)));
            (format!("{h}\n{}", c.text), key)
        }
        _ => (c.text.clone(), c.content_hash.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::embed_input;

    fn chunk(heading: Option<&str>) -> kb_ingest::Chunk {
        kb_ingest::Chunk {
            ord: 0,
            text: "Polish the lens every morning.".into(),
            token_count: 6,
            byte_start: 0,
            byte_end: 30,
            page: None,
            heading: heading.map(str::to_string),
            content_hash: "abc".into(),
        }
    }

    #[test]
    fn chunks_are_embedded_with_their_heading_path_under_their_own_key() {
        let c = chunk(Some("Lighthouse > Keeper's duties"));
        let (text, key) = embed_input(&c, true);
        assert_eq!(
            text,
            "Lighthouse > Keeper's duties\nPolish the lens every morning."
        );
        // Another vector, so another cache key; the same heading and text, the same key.
        assert_ne!(key, "abc");
        assert_eq!(embed_input(&c, true).1, key);
        let other = chunk(Some("Harbour > Keeper's duties"));
        assert_ne!(embed_input(&other, true).1, key);
        // Switched off, or no heading: the text alone, under its content hash.
        assert_eq!(
            embed_input(&c, false),
            ("Polish the lens every morning.".into(), "abc".into())
        );
        assert_eq!(embed_input(&chunk(None), true).1, "abc");
        assert_eq!(embed_input(&chunk(Some("  ")), true).1, "abc");
    }
}
