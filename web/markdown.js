// A small, safe Markdown renderer for model answers.
//
// Everything is built with createElement + textContent: no string of the answer ever reaches
// innerHTML, so raw HTML in an answer shows as text. Images are never rendered (a model that
// writes ![](https://host/?q=secret) must not make the browser fetch anything): they become
// their alt text. Links are real <a> only for absolute http(s) URLs; anything else is text.
//
// Supported: paragraphs (single newlines are line breaks), ATX headings, fenced code blocks
// (an unterminated fence, as while streaming, runs to the end), bullet and numbered lists
// (nested by indentation), block quotes, horizontal rules, `code spans`, **strong**, *em*,
// [text](http://...), <http://...>, backslash escapes and [n] / [1, 2] citations.

const MAX_DEPTH = 6;

function h(doc, tag, cls, text) {
  const n = doc.createElement(tag);
  if (cls) n.className = cls;
  if (text != null) n.textContent = text;
  return n;
}

/** An absolute http(s) URL, or null. */
export function safeHref(url) {
  try {
    const u = new URL(url);
    return u.protocol === 'http:' || u.protocol === 'https:' ? u.href : null;
  } catch {
    return null;
  }
}

// [text](url "title"): the text may hold one level of brackets; the URL one level of parens.
const LINK = /^\[((?:[^[\]\\]|\\.|\[[^[\]]*\])*)\]\(\s*<?([^\s()<>]*(?:\([^\s()]*\)[^\s()<>]*)*)>?(?:\s+(?:"[^"]*"|'[^']*'))?\s*\)/;
const CITE = /^\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]/;
const AUTOLINK = /^<(https?:\/\/[^\s<>]+)>/i;
const ESCAPABLE = /[\\`*_[\]()!#>+\-.~|{}<"']/;

function inline(parent, s, ctx, depth) {
  const doc = ctx.doc;
  let buf = '';
  const flush = () => {
    if (buf) parent.append(doc.createTextNode(buf));
    buf = '';
  };
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    const rest = () => s.slice(i);
    if (c === '\\' && i + 1 < s.length && ESCAPABLE.test(s[i + 1])) {
      buf += s[i + 1];
      i += 2;
      continue;
    }
    if (c === '`') {
      const m = /^(`+)([\s\S]*?[^`])\1(?!`)/.exec(rest());
      if (m) {
        flush();
        let code = m[2];
        if (/^ .* $/.test(code)) code = code.slice(1, -1);
        parent.append(h(doc, 'code', null, code));
        i += m[0].length;
        continue;
      }
      // A run of backticks without its closing run is literal.
      const run = /^`+/.exec(rest())[0];
      buf += run;
      i += run.length;
      continue;
    }
    if (c === '!' && s[i + 1] === '[') {
      const m = LINK.exec(s.slice(i + 1));
      if (m) {
        // Never an <img>: the alt text, marked as an image that was not shown.
        flush();
        const alt = m[1].replace(/\\(.)/g, '$1').trim();
        parent.append(h(doc, 'span', 'md-image', alt ? `[image: ${alt}]` : '[image]'));
        i += 1 + m[0].length;
        continue;
      }
    }
    if (c === '[') {
      const m = ctx.inLink ? null : LINK.exec(rest());
      if (m) {
        flush();
        const href = safeHref(m[2]);
        const target = href ? h(doc, 'a') : h(doc, 'span', 'md-link');
        if (href) {
          target.href = href;
          target.rel = 'noopener noreferrer nofollow';
          target.target = '_blank';
          target.referrerPolicy = 'no-referrer';
        }
        if (depth < MAX_DEPTH) inline(target, m[1], { ...ctx, inLink: true }, depth + 1);
        else target.textContent = m[1];
        parent.append(target);
        i += m[0].length;
        continue;
      }
      const cm = CITE.exec(rest());
      if (cm) {
        flush();
        for (const n of cm[1].split(',').map((x) => x.trim())) {
          const b = h(doc, 'button', 'cite', n);
          b.type = 'button';
          b.dataset.n = n;
          b.setAttribute('aria-label', 'Show source ' + n);
          parent.append(b);
        }
        i += cm[0].length;
        continue;
      }
    }
    if (c === '<' && !ctx.inLink) {
      const m = AUTOLINK.exec(rest());
      const href = m && safeHref(m[1]);
      if (href) {
        flush();
        const a = h(doc, 'a', null, m[1]);
        a.href = href;
        a.rel = 'noopener noreferrer nofollow';
        a.target = '_blank';
        a.referrerPolicy = 'no-referrer';
        parent.append(a);
        i += m[0].length;
        continue;
      }
    }
    if ((c === '*' || c === '_') && depth < MAX_DEPTH) {
      // '_' only at word boundaries, so snake_case stays as it is.
      const prev = i > 0 ? s[i - 1] : ' ';
      if (c === '*' || !/[\p{L}\p{N}]/u.test(prev)) {
        const strong = c === '*' ? /^\*\*(?=\S)([\s\S]*?\S)\*\*/ : /^__(?=\S)([\s\S]*?\S)__(?![\p{L}\p{N}])/u;
        const em = c === '*' ? /^\*(?=[^\s*])([\s\S]*?[^\s*])\*(?!\*)/ : /^_(?=[^\s_])([\s\S]*?[^\s_])_(?![\p{L}\p{N}_])/u;
        let m = strong.exec(rest());
        let tag = 'strong';
        if (!m) {
          m = em.exec(rest());
          tag = 'em';
        }
        if (m) {
          flush();
          const node = h(doc, tag);
          inline(node, m[1], ctx, depth + 1);
          parent.append(node);
          i += m[0].length;
          continue;
        }
      }
    }
    buf += c;
    i += 1;
  }
  flush();
}

function lines(parent, textLines, ctx, depth) {
  // Lines of one paragraph: single newlines are line breaks (answers are not hard-wrapped).
  textLines.forEach((l, k) => {
    if (k) parent.append(h(ctx.doc, 'br'));
    inline(parent, l.trim(), ctx, depth);
  });
}

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|(\d{1,9})[.)])(\s+|$)/;

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || ITEM.test(line) || RULE.test(line);
}

function blocks(parent, src, ctx, depth) {
  const doc = ctx.doc;
  let i = 0;
  while (i < src.length) {
    const line = src[i];
    if (/^\s*$/.test(line)) { i++; continue; }
    if (depth >= MAX_DEPTH) {
      // Pathological nesting: the rest is a plain paragraph.
      const p = h(doc, 'p');
      lines(p, src.slice(i).filter((l) => l.trim() !== ''), ctx, depth);
      parent.append(p);
      return;
    }
    let m = FENCE.exec(line);
    if (m) {
      const fence = m[1];
      const body = [];
      i++;
      while (i < src.length) {
        const close = new RegExp('^ {0,3}' + fence[0] + '{' + fence.length + ',}\\s*$');
        if (close.test(src[i])) { i++; break; }
        body.push(src[i]);
        i++;
      }
      const pre = h(doc, 'pre');
      const code = h(doc, 'code', null, body.join('\n'));
      const lang = m[2].trim().split(/\s+/)[0];
      if (lang && /^[\w+-]{1,32}$/.test(lang)) code.dataset.lang = lang;
      pre.append(code);
      parent.append(pre);
      continue;
    }
    m = HEADING.exec(line);
    if (m) {
      // Answer headings sit below the page's own h2.
      const node = h(doc, 'h' + Math.min(6, m[1].length + 2), 'md-heading');
      inline(node, m[2] || '', ctx, depth);
      parent.append(node);
      i++;
      continue;
    }
    if (RULE.test(line)) {
      parent.append(h(doc, 'hr'));
      i++;
      continue;
    }
    if (QUOTE.test(line)) {
      const body = [];
      while (i < src.length && src[i].trim() !== '' && (QUOTE.test(src[i]) || !startsBlock(src[i]))) {
        body.push(src[i].replace(QUOTE, ''));
        i++;
      }
      const q = h(doc, 'blockquote');
      blocks(q, body, ctx, depth + 1);
      parent.append(q);
      continue;
    }
    m = ITEM.exec(line);
    if (m) {
      const ordered = m[3] != null;
      const list = h(doc, ordered ? 'ol' : 'ul');
      if (ordered && Number(m[3]) !== 1) list.start = Number(m[3]);
      while (i < src.length) {
        const im = ITEM.exec(src[i]);
        if (!im || (im[3] != null) !== ordered) break;
        const indent = im[0].length;
        const body = [src[i].slice(indent)];
        i++;
        // The item goes on while lines are indented, or are lazy continuations of its text.
        while (i < src.length) {
          const l = src[i];
          if (l.trim() === '') {
            const next = src[i + 1];
            if (next != null && /^\s{2,}\S/.test(next)) { body.push(''); i++; continue; }
            break;
          }
          if (/^\s{2,}/.test(l)) { body.push(l.replace(/^\s{1,4}/, '')); i++; continue; }
          if (startsBlock(l)) break;
          body.push(l);
          i++;
        }
        const li = h(doc, 'li');
        blocks(li, body, ctx, depth + 1);
        // A tight item: its single paragraph's content goes straight into the <li>.
        if (li.childNodes.length === 1 && li.firstChild.nodeName === 'P') li.replaceChildren(...li.firstChild.childNodes);
        list.append(li);
        // A blank line between items of the same list keeps the list going.
        if (i < src.length && src[i].trim() === '' && ITEM.test(src[i + 1] || '')) i++;
      }
      parent.append(list);
      continue;
    }
    const para = [];
    while (i < src.length && src[i].trim() !== '' && (para.length === 0 || !startsBlock(src[i]))) {
      para.push(src[i]);
      i++;
    }
    const p = h(doc, 'p');
    lines(p, para, ctx, depth);
    parent.append(p);
  }
}

/** Render `text` as Markdown into a new DocumentFragment. */
export function renderMarkdown(text, doc = document) {
  const frag = doc.createDocumentFragment();
  const src = String(text || '').replace(/\r\n?/g, '\n').split('\n');
  blocks(frag, src, { doc, inLink: false }, 0);
  return frag;
}
