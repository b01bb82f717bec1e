// kb web page: plain ES module, no dependencies.
const $ = (sel) => document.querySelector(sel);
const els = {
  collection: $('#collection'), collections: $('#collections-list'), status: $('#status'),
  fileInput: $('#file-input'), dropZone: $('#drop-zone'), uploadList: $('#upload-list'),
  docsBody: $('#docs-table tbody'), docsEmpty: $('#docs-empty'), refresh: $('#refresh-docs'),
  question: $('#question'), askBtn: $('#ask-btn'), stopBtn: $('#stop-btn'), spinner: $('#ask-spinner'),
  answer: $('#answer'), sources: $('#sources'), meta: $('#answer-meta'), errorBox: $('#error-box'),
};

// ---------- helpers ----------
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-')) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) node.append(c);
  return node;
}

function setStatus(msg, isError = true) {
  els.status.textContent = msg || '';
  els.status.classList.toggle('error', Boolean(msg) && isError);
}

function collectionName() {
  return els.collection.value.trim() || 'default';
}

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function errorFrom(res) {
  let code = 'http_' + res.status, message = `HTTP ${res.status} ${res.statusText}`.trim();
  try {
    const body = await res.json();
    if (body && body.error) { code = body.error.code || code; message = body.error.message || message; }
  } catch { /* not JSON */ }
  return new ApiError(res.status, code, message);
}

// fetch wrapper: JSON in/out, throws ApiError on non-2xx, status 0 when unreachable.
async function api(path, opts = {}) {
  let res;
  try {
    res = await fetch(path, opts);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    setStatus('Server unreachable: ' + e.message);
    throw new ApiError(0, 'unreachable', 'server unreachable');
  }
  if (!res.ok) throw await errorFrom(res);
  if (res.status === 204) return null;
  const text = await res.text();
  try { return text ? JSON.parse(text) : null; } catch { throw new ApiError(res.status, 'bad_json', 'invalid JSON from server'); }
}

function humanSize(n) {
  if (n == null || isNaN(n)) return '';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)) + ' ' + units[i];
}

function fmtDate(v) {
  if (v == null || v === '') return '';
  const d = new Date(typeof v === 'number' && v < 1e12 ? v * 1000 : v);
  return isNaN(d) ? String(v) : d.toLocaleString();
}

const show = (v) => (v == null ? '' : String(v));

// ---------- collections ----------
async function loadCollections() {
  try {
    const data = await api('/v1/collections');
    els.collections.replaceChildren(
      ...(data.collections || []).map((c) => el('option', { value: c.name, text: `${c.documents ?? 0} docs` })));
  } catch (e) {
    if (e.status) setStatus('Could not load collections: ' + e.message);
  }
}

let collectionTimer = null;
els.collection.addEventListener('input', () => {
  clearTimeout(collectionTimer);
  collectionTimer = setTimeout(loadDocs, 300);
});
els.collection.addEventListener('change', () => { clearTimeout(collectionTimer); loadDocs(); });

// ---------- documents ----------
let docsSeq = 0;
let pollTimer = null;

async function loadDocs() {
  const seq = ++docsSeq;
  const coll = collectionName();
  clearTimeout(pollTimer);
  let docs;
  try {
    const data = await api(`/v1/collections/${encodeURIComponent(coll)}/documents`);
    docs = data.documents || [];
  } catch (e) {
    if (seq !== docsSeq) return;
    if (e.status === 404) docs = [];
    else {
      if (e.status) setStatus('Could not load documents: ' + e.message);
      pollTimer = setTimeout(loadDocs, 5000); // retry while the server is down
      return;
    }
  }
  if (seq !== docsSeq) return; // a newer request (e.g. other collection) won
  if (els.status.textContent.startsWith('Server unreachable') ||
      els.status.textContent.startsWith('Could not load')) setStatus('');
  renderDocs(docs);
  if (docs.some((d) => d.status === 'processing')) pollTimer = setTimeout(loadDocs, 5000);
}

function renderDocs(docs) {
  els.docsEmpty.hidden = docs.length > 0;
  els.docsBody.replaceChildren(...docs.map((d) => {
    const status = el('td', { class: 'status-' + d.status, text: d.status });
    if (d.status === 'failed' && d.error) status.textContent = 'failed: ' + d.error;
    const del = el('button', { type: 'button', class: 'delete', text: 'Delete', 'aria-label': 'Delete ' + d.name });
    del.addEventListener('click', () => deleteDoc(d));
    const tr = el('tr', { 'data-doc-id': d.id },
      el('td', { class: 'name', text: show(d.name), title: show(d.name) }),
      el('td', { text: show(d.media_type) }),
      el('td', { class: 'num', text: humanSize(d.size_bytes) }),
      el('td', { class: 'num', text: show(d.pages) }),
      el('td', { class: 'num', text: show(d.chunks) }),
      status,
      el('td', { text: fmtDate(d.updated_at) }),
      el('td', {}, del));
    return tr;
  }));
}

async function deleteDoc(d) {
  if (!confirm(`Delete "${d.name}"?`)) return;
  try {
    await api(`/v1/documents/${encodeURIComponent(d.id)}`, { method: 'DELETE' });
    setStatus('');
  } catch (e) {
    if (e.status) setStatus(`Could not delete "${d.name}": ${e.message}`);
  }
  loadDocs();
}

els.refresh.addEventListener('click', () => { loadDocs(); loadCollections(); });

// ---------- upload ----------
function uploadRow(name) {
  const state = el('span', { class: 'state', text: 'uploading…' });
  const li = el('li', {}, el('span', { class: 'name', text: name }), state);
  els.uploadList.prepend(li);
  return (text, cls) => { state.textContent = text; li.className = cls || ''; };
}

async function upload(fileList) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  const coll = collectionName();
  const rows = files.map((f) => uploadRow(f.name));
  const form = new FormData();
  for (const f of files) form.append('file', f, f.name);
  let data;
  try {
    data = await api(`/v1/collections/${encodeURIComponent(coll)}/documents`, { method: 'POST', body: form });
  } catch (e) {
    rows.forEach((set) => set('failed: ' + e.message, 'failed'));
    return;
  }
  (data.documents || []).forEach((doc, i) => {
    const set = rows[i] || uploadRow(doc.name);
    if (doc.duplicate && !doc.job_id) set('ready (duplicate, already ingested)', 'done');
    else if (doc.job_id) followJob(doc.job_id, set, doc.duplicate);
    else set('queued', '');
  });
  loadDocs();
  loadCollections();
}

function followJob(jobId, set, duplicate) {
  set(duplicate ? 'queued (duplicate)' : 'queued', 'active');
  const es = new EventSource(`/v1/jobs/${encodeURIComponent(jobId)}/events`);
  let finished = false;
  es.addEventListener('progress', (ev) => {
    let p;
    try { p = JSON.parse(ev.data); } catch { return; }
    if (p.status === 'done') {
      set('ready', 'done');
    } else if (p.status === 'failed') {
      set('failed: ' + (p.error || 'unknown error'), 'failed');
    } else {
      const stage = p.stage || p.status;
      set(p.total ? `${stage} ${p.done ?? 0}/${p.total}` : stage, 'active');
      return;
    }
    finished = true;
    es.close();
    loadDocs();
  });
  es.addEventListener('error', () => {
    if (finished || es.readyState !== EventSource.CLOSED) return; // browser retries on its own
    set('progress unavailable (see document list)', 'failed');
    loadDocs();
  });
}

els.fileInput.addEventListener('change', () => {
  upload(els.fileInput.files);
  els.fileInput.value = '';
});
els.dropZone.addEventListener('keydown', (e) => {
  if ((e.key === 'Enter' || e.key === ' ') && e.target === els.dropZone) {
    e.preventDefault();
    els.fileInput.click();
  }
});
for (const type of ['dragenter', 'dragover']) {
  els.dropZone.addEventListener(type, (e) => { e.preventDefault(); els.dropZone.classList.add('over'); });
}
els.dropZone.addEventListener('dragleave', () => els.dropZone.classList.remove('over'));
els.dropZone.addEventListener('drop', (e) => {
  e.preventDefault();
  els.dropZone.classList.remove('over');
  upload(e.dataTransfer && e.dataTransfer.files);
});

// ---------- ask ----------
let controller = null;
let answerText = '';
let renderFrame = 0;

// Safe minimal markdown: paragraphs, **bold**, `code`, [n] citations. textContent only.
function renderInline(parent, text) {
  const re = /(\*\*[^*\n]+\*\*|`[^`\n]+`|\[\d+(?:\s*,\s*\d+)*\])/g;
  let last = 0;
  for (const m of text.matchAll(re)) {
    if (m.index > last) parent.append(text.slice(last, m.index));
    const tok = m[0];
    if (tok.startsWith('**')) {
      const b = el('strong');
      renderInline(b, tok.slice(2, -2));
      parent.append(b);
    } else if (tok.startsWith('`')) {
      parent.append(el('code', { text: tok.slice(1, -1) }));
    } else {
      for (const n of tok.slice(1, -1).split(',').map((s) => s.trim())) {
        parent.append(el('button', { type: 'button', class: 'cite', 'data-n': n, text: n, 'aria-label': 'Source ' + n }));
      }
    }
    last = m.index + tok.length;
  }
  if (last < text.length) parent.append(text.slice(last));
}

function renderAnswer() {
  cancelAnimationFrame(renderFrame);
  renderFrame = 0;
  const paras = answerText.split(/\n{2,}/).filter((p) => p.trim() !== '');
  els.answer.replaceChildren(...paras.map((p) => {
    const node = el('p');
    p.split('\n').forEach((line, i) => {
      if (i) node.append(el('br'));
      renderInline(node, line);
    });
    return node;
  }));
}

function scheduleRender() {
  if (!renderFrame) renderFrame = requestAnimationFrame(renderAnswer);
}

function renderSources(sources) {
  els.sources.replaceChildren(...(sources || []).map((s) => {
    const where = [s.page != null ? 'page ' + s.page : '', s.heading || ''].filter(Boolean).join(' / ');
    const parts = [`[${s.n}] ${s.doc_name || s.doc_id || ''}`];
    if (where) parts.push(where);
    if (typeof s.score === 'number') parts.push('score ' + s.score.toFixed(3));
    return el('li', { id: 'source-' + s.n, class: 'source' },
      el('details', {}, el('summary', { text: parts.join(' — ') }), el('p', { class: 'passage', text: show(s.text) })));
  }));
}

function focusSource(n) {
  const li = document.getElementById('source-' + n);
  if (!li) return;
  li.querySelector('details').open = true;
  document.querySelectorAll('.source.highlight').forEach((x) => x.classList.remove('highlight'));
  li.classList.add('highlight');
  li.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  li.querySelector('summary').focus({ preventScroll: true });
}

els.answer.addEventListener('click', (e) => {
  const btn = e.target.closest('button.cite');
  if (btn) focusSource(btn.dataset.n);
});

function showError(msg) {
  els.errorBox.textContent = msg;
  els.errorBox.hidden = false;
}

function renderMeta(meta, done) {
  const parts = [];
  if (done.declined) parts.push('declined');
  if (done.answerer) parts.push('answerer: ' + done.answerer);
  if (meta.model) parts.push('model: ' + meta.model);
  if (meta.cached != null) parts.push('cached: ' + (meta.cached ? 'yes' : 'no'));
  const t = done.timings_ms || {};
  const ms = (k, label) => { if (t[k] != null) parts.push(`${label} ${Math.round(t[k])} ms`); };
  ms('retrieve', 'retrieve'); ms('first_token', 'first token'); ms('total', 'total');
  const u = done.usage || {};
  if (u.prompt_tokens != null || u.completion_tokens != null) {
    parts.push(`tokens ${u.prompt_tokens ?? 0} in / ${u.completion_tokens ?? 0} out`);
  }
  if (typeof u.cost_usd === 'number') parts.push('$' + u.cost_usd.toFixed(4));
  els.meta.textContent = parts.join(' · ');
  for (const n of done.citations || []) {
    const li = document.getElementById('source-' + n);
    if (li) li.classList.add('cited');
  }
}

// Parse an SSE byte stream; calls onEvent(name, data) for each event.
async function readSSE(body, onEvent) {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  let cr = ''; // a trailing '\r' may be the first half of a CRLF split across chunks
  const feed = (text) => {
    text = cr + text;
    cr = text.endsWith('\r') ? '\r' : '';
    if (cr) text = text.slice(0, -1);
    buf += text.replace(/\r\n?/g, '\n');
  };
  const dispatch = (block) => {
    let name = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line === '' || line.startsWith(':')) continue;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') name = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) onEvent(name, data.join('\n'));
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    feed(decoder.decode(value, { stream: true }));
    let idx;
    while ((idx = buf.indexOf('\n\n')) >= 0) {
      dispatch(buf.slice(0, idx));
      buf = buf.slice(idx + 2);
    }
  }
  feed(decoder.decode());
  buf += cr ? '\n' : '';
  if (buf.trim()) dispatch(buf);
}

function setBusy(busy) {
  els.askBtn.disabled = busy;
  els.stopBtn.disabled = !busy;
  els.spinner.hidden = !busy;
  els.answer.setAttribute('aria-busy', String(busy));
}

async function ask() {
  const question = els.question.value.trim();
  if (!question || controller) return;
  controller = new AbortController();
  answerText = '';
  els.answer.replaceChildren();
  els.sources.replaceChildren();
  els.meta.textContent = '';
  els.errorBox.hidden = true;
  els.errorBox.textContent = '';
  setBusy(true);
  let meta = {};
  let finished = false;
  try {
    const res = await fetch('/v1/ask', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ question, collection: collectionName() }),
      signal: controller.signal,
    });
    if (!res.ok) throw await errorFrom(res);
    setStatus('');
    await readSSE(res.body, (name, raw) => {
      let data;
      try { data = JSON.parse(raw); } catch { return; }
      if (name === 'meta') meta = data || {};
      else if (name === 'sources') renderSources(data);
      else if (name === 'token') { answerText += data.text || ''; scheduleRender(); }
      else if (name === 'done') {
        finished = true;
        if (typeof data.answer === 'string' && data.answer) answerText = data.answer;
        renderAnswer();
        renderMeta(meta, data);
      } else if (name === 'error') {
        finished = true;
        renderAnswer();
        showError((data.error && data.error.message) || 'The server reported an error.');
      }
    });
    if (!finished) { renderAnswer(); showError('The answer stream ended unexpectedly.'); }
  } catch (e) {
    renderAnswer();
    if (e.name === 'AbortError') {
      els.answer.append(el('p', { class: 'stopped', text: '(stopped)' }));
    } else if (e instanceof ApiError) {
      showError(e.message);
    } else {
      setStatus('Server unreachable: ' + e.message);
      showError('Server unreachable: ' + e.message);
    }
  } finally {
    controller = null;
    setBusy(false);
  }
}

els.askBtn.addEventListener('click', ask);
els.stopBtn.addEventListener('click', () => { if (controller) controller.abort(); });
els.question.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ask();
  }
});

// ---------- start ----------
loadCollections();
loadDocs();
