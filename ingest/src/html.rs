//! HTML -> text that keeps the document's structure: headings become Markdown `#` lines (so the
//! Markdown-aware chunker splits at them and chunks know their heading path), block elements
//! become line breaks, inline elements stay glued. Scripts, styles, navigation and Sphinx-style
//! header links are dropped. The walk is iterative, so deeply nested input cannot overflow the
//! stack.

use crate::Heading;
use ego_tree::NodeRef;
use scraper::{Html, Node};

pub struct HtmlText {
    pub title: Option<String>,
    pub text: String,
    pub headings: Vec<Heading>,
}

const SKIP: &[&str] = &[
    "script", "style", "noscript", "template", "head", "nav", "svg", "iframe", "object", "embed",
    "canvas", "button", "select", "option", "footer", "form", "input", "textarea", "math",
];

const BLOCK: &[&str] = &[
    "p",
    "div",
    "section",
    "article",
    "main",
    "aside",
    "header",
    "ul",
    "ol",
    "li",
    "dl",
    "dt",
    "dd",
    "table",
    "thead",
    "tbody",
    "tfoot",
    "tr",
    "blockquote",
    "figure",
    "figcaption",
    "caption",
    "address",
    "details",
    "summary",
    "fieldset",
    "hr",
    "br",
    "body",
    "html",
];

fn heading_level(name: &str) -> Option<u8> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

struct Writer {
    out: String,
    /// Newlines owed before the next text (0, 1 or 2).
    pending_breaks: u8,
    /// A space is owed before the next text.
    pending_space: bool,
    pre_depth: usize,
}

impl Writer {
    fn block(&mut self, n: u8) {
        if !self.out.is_empty() {
            self.pending_breaks = self.pending_breaks.max(n);
        }
        self.pending_space = false;
    }

    fn flush_pending(&mut self) {
        if self.pending_breaks > 0 {
            while self.out.ends_with(' ') {
                self.out.pop();
            }
            let have = self.out.chars().rev().take_while(|&c| c == '\n').count() as u8;
            for _ in have..self.pending_breaks {
                self.out.push('\n');
            }
            self.pending_breaks = 0;
            self.pending_space = false;
        } else if self.pending_space {
            if !self.out.is_empty() && !self.out.ends_with([' ', '\n']) {
                self.out.push(' ');
            }
            self.pending_space = false;
        }
    }

    fn text(&mut self, s: &str) {
        if self.pre_depth > 0 {
            if s.is_empty() {
                return;
            }
            self.flush_pending();
            self.out.push_str(s);
            return;
        }
        let mut words = s.split_ascii_whitespace().peekable();
        if words.peek().is_none() {
            if !s.is_empty() {
                self.pending_space = true;
            }
            return;
        }
        if s.starts_with(|c: char| c.is_ascii_whitespace()) {
            self.pending_space = true;
        }
        let mut first = true;
        for w in words {
            if !first {
                self.pending_space = true;
            }
            self.flush_pending();
            self.out.push_str(w);
            first = false;
        }
        if s.ends_with(|c: char| c.is_ascii_whitespace()) {
            self.pending_space = true;
        }
    }
}

enum Step<'a> {
    Enter(NodeRef<'a, Node>),
    Leave {
        block: u8,
        pre: bool,
        heading: Option<(u8, usize)>,
    },
}

pub fn html_to_text(src: &str) -> HtmlText {
    let doc = Html::parse_document(src);
    let title = doc
        .tree
        .root()
        .descendants()
        .find(|n| n.value().as_element().is_some_and(|e| e.name() == "title"))
        .map(|n| {
            let t: String = n
                .descendants()
                .filter_map(|d| d.value().as_text().map(|t| t.to_string()))
                .collect();
            t.split_whitespace().collect::<Vec<_>>().join(" ")
        })
        .filter(|t| !t.is_empty());
    let mut w = Writer {
        out: String::with_capacity(src.len() / 2),
        pending_breaks: 0,
        pending_space: false,
        pre_depth: 0,
    };
    let mut headings = Vec::new();
    let mut stack = vec![Step::Enter(doc.tree.root())];
    while let Some(step) = stack.pop() {
        match step {
            Step::Enter(node) => match node.value() {
                Node::Text(t) => w.text(t),
                Node::Element(el) => {
                    let name = el.name();
                    if SKIP.contains(&name)
                        || el.attr("role") == Some("navigation")
                        || el.attr("aria-hidden") == Some("true")
                        || el.attr("hidden").is_some()
                        || (name == "a" && el.classes().any(|c| c == "headerlink"))
                    {
                        continue;
                    }
                    let level = heading_level(name);
                    let pre = name == "pre";
                    let block = if level.is_some() || pre {
                        2
                    } else if BLOCK.contains(&name) {
                        if matches!(name, "p" | "table" | "blockquote" | "ul" | "ol" | "dl") {
                            2
                        } else {
                            1
                        }
                    } else if matches!(name, "td" | "th") {
                        w.pending_space = true;
                        0
                    } else {
                        0
                    };
                    if block > 0 {
                        w.block(block);
                    }
                    let mut heading = None;
                    if let Some(l) = level {
                        w.flush_pending();
                        let start = w.out.len();
                        for _ in 0..l {
                            w.out.push('#');
                        }
                        w.out.push(' ');
                        heading = Some((l, start));
                    }
                    if name == "li" {
                        w.flush_pending();
                        w.out.push_str("- ");
                    }
                    if pre {
                        w.flush_pending();
                        w.pre_depth += 1;
                    }
                    stack.push(Step::Leave {
                        block,
                        pre,
                        heading,
                    });
                    let children: Vec<_> = node.children().collect();
                    for c in children.into_iter().rev() {
                        stack.push(Step::Enter(c));
                    }
                }
                Node::Document | Node::Fragment => {
                    let children: Vec<_> = node.children().collect();
                    for c in children.into_iter().rev() {
                        stack.push(Step::Enter(c));
                    }
                }
                _ => {}
            },
            Step::Leave {
                block,
                pre,
                heading,
            } => {
                if pre {
                    w.pre_depth -= 1;
                    while w.out.ends_with('\n') {
                        w.out.pop();
                    }
                }
                if let Some((level, start)) = heading {
                    let text = w.out[start..].trim_start_matches('#').trim().to_string();
                    if text.is_empty() {
                        w.out.truncate(start);
                    } else {
                        headings.push(Heading {
                            byte_start: start,
                            level,
                            text,
                        });
                    }
                }
                if block > 0 {
                    w.block(block);
                }
            }
        }
    }
    let text = w.out.trim_end().to_string();
    HtmlText {
        title,
        text,
        headings,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_structure_drops_chrome() {
        let src = r##"<!doctype html><html><head><title>The  Guide</title>
            <style>p{}</style><script>var x = "secret";</script></head>
            <body><nav>Home | About</nav>
            <div role="navigation">sidebar</div>
            <h1>Intro<a class="headerlink" href="#intro">¶</a></h1>
            <p>Call <code>min(32, os.cpu_count() + 4)</code> to   see.</p>
            <h2>Details</h2><ul><li>one</li><li>two <b>bold</b></li></ul>
            <pre>line 1
  line 2</pre>
            <footer>Copyright</footer></body></html>"##;
        let out = html_to_text(src);
        assert_eq!(out.title.as_deref(), Some("The Guide"));
        let t = &out.text;
        assert!(!t.contains("secret") && !t.contains("Home") && !t.contains("sidebar"));
        assert!(!t.contains('¶') && !t.contains("Copyright"));
        assert!(
            t.contains("# Intro\n\nCall min(32, os.cpu_count() + 4) to see."),
            "{t}"
        );
        assert!(t.contains("## Details"));
        assert!(t.contains("- one\n- two bold"), "{t}");
        assert!(t.contains("line 1\n  line 2"), "{t}");
        assert_eq!(out.headings.len(), 2);
        assert_eq!(out.headings[1].text, "Details");
        assert_eq!(out.headings[1].level, 2);
        assert!(t[out.headings[1].byte_start..].starts_with("## Details"));
    }

    #[test]
    fn deep_nesting_does_not_overflow() {
        let src = "<div>".repeat(20_000) + "deep" + &"</div>".repeat(20_000);
        let out = html_to_text(&src);
        assert!(out.text.contains("deep"));
    }
}
