// kb web page: plain ES modules, no dependencies, no build step.
import { renderMarkdown } from './markdown.js';

const $ = (sel) => document.querySelector(sel);
const els = {
  collection: $('#collection'), collections: $('#collections-list'), status: $('#status'),
  fileInput: $('#file-input'), dropZone: $('#drop-zone'), uploadList: $('#upload-list'),
  docsBody: $('#docs-table tbody'), docsEmpty: $('#docs-empty'), refresh: $('#refresh-docs'),
  docsFilter: $('#docs-filter'), docsCount: $('#docs-count'), versionInput: $('#version-input'),
  question: $('#question'), askBtn: $('#ask-btn'), stopBtn: $('#stop-btn'), spinner: $('#ask-spinner'),
  answer: $('#answer'), sources: $('#sources'), meta: $('#answer-meta'), errorBox: $('#error-box'),
  thread: $('#thread'), current: $('#current'), currentQ: $('#current-q'), searchedFor: $('#searched-for'),
  convState: $('#conv-state'), newConv: $('#new-conv'), convList: $('#conv-list'), convEmpty: $('#conv-empty'),
  convCount: $('#conv-count'), refreshConvs: $('#refresh-convs'),
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

// API keys (servers with auth.mode = "keys"): asked for on the first 401, kept for this tab
// only (session storage), sent as Authorization: Bearer.
const KEY_ITEM = 'kb-api-key';
function authHeaders() {
  const key = sessionStorage.getItem(KEY_ITEM);
  return key ? { Authorization: 'Bearer ' + key } : {};
}
// After a 401: ask for a key; true when one was given (the request is then sent again).
function askForKey(hadKey) {
  const key = window.prompt(hadKey ? 'That API key was not accepted. API key:' : 'This kb server needs an API key:');
  if (!key || !key.trim()) return false;
  sessionStorage.setItem(KEY_ITEM, key.trim());
  return true;
}
// fetch with the key, asking for one (once) on a 401.
async function authFetch(path, opts = {}) {
  const send = () => fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
  const used = sessionStorage.getItem(KEY_ITEM);
  const res = await send();
  if (res.status !== 401) return res;
  // Requests refused together at page load: the first asks, the others use its answer.
  if (sessionStorage.getItem(KEY_ITEM) !== used) return send();
  return askForKey(!!used) ? send() : res;
}

// fetch wrapper: JSON in/out, throws ApiError on non-2xx, status 0 when unreachable.
async function api(path, opts = {}) {
  let res;
  try {
    res = await authFetch(path, opts);
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

// A message a person can act on, for an API error code / HTTP status.
function describeError(e) {
  const code = e.code || '';
  const detail = e.message && e.message !== code ? ` (${e.message})` : '';
  if (e.status === 0 || code === 'unreachable') {
    return 'Cannot reach the kb server: it may be down or restarting. Try again in a moment.';
  }
  if (code === 'upstream_timeout' || e.status === 504) {
    return 'The language model did not answer in time (upstream timeout). Try again.' + detail;
  }
  if (code === 'upstream_rate_limited' || e.status === 429) {
    return 'The language model is rate-limiting requests. Wait a little and try again.' + detail;
  }
  if (code === 'upstream_unreachable') return 'The language model server cannot be reached.' + detail;
  if (code.startsWith('upstream_')) return 'The language model failed to answer.' + detail;
  if (code === 'shutting_down' || e.status === 503) return 'The kb server is shutting down or not ready.' + detail;
  if (code === 'collection_not_found') return `Collection "${collectionName()}" does not exist yet: upload files to create it.`;
  if (code === 'conversation_collection_mismatch') {
    return 'This conversation belongs to another collection. Start a new conversation to ask this collection.' + detail;
  }
  if (code === 'conversation_not_found') return 'That conversation no longer exists (it may have been deleted).';
  return e.message || 'Something went wrong.';
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
let allDocs = [];
let collectionExists = true;

async function loadDocs() {
  const seq = ++docsSeq;
  const coll = collectionName();
  clearTimeout(pollTimer);
  let docs;
  let exists = true;
  try {
    const data = await api(`/v1/collections/${encodeURIComponent(coll)}/documents`);
    docs = data.documents || [];
  } catch (e) {
    if (seq !== docsSeq) return;
    if (e.status === 404 || (e.status === 400 && e.code === 'invalid_collection')) {
      docs = [];
      exists = false;
      if (e.status === 400) setStatus(e.message);
    } else {
      setStatus('Could not load documents: ' + describeError(e));
      pollTimer = setTimeout(loadDocs, 5000); // retry while the server is down
      return;
    }
  }
  if (seq !== docsSeq) return; // a newer request (e.g. other collection) won
  if (/^(Server unreachable|Could not load|collection names)/.test(els.status.textContent) && exists) setStatus('');
  allDocs = docs;
  collectionExists = exists;
  renderDocs();
  if (docs.some((d) => d.status === 'processing')) pollTimer = setTimeout(loadDocs, 3000);
}

const COLUMNS = ['Name', 'Type', 'Size', 'Pages', 'Chunks', 'Status', 'Updated', 'Actions'];

function renderDocs() {
  const q = els.docsFilter.value.trim().toLowerCase();
  const docs = q ? allDocs.filter((d) => String(d.name).toLowerCase().includes(q)) : allDocs;
  els.docsEmpty.hidden = docs.length > 0;
  els.docsEmpty.textContent = !collectionExists
    ? `Collection "${collectionName()}" does not exist yet: upload files to create it.`
    : allDocs.length ? `No document name contains "${els.docsFilter.value.trim()}".` : 'No documents in this collection.';
  els.docsCount.textContent = allDocs.length
    ? (q ? `${docs.length} of ${allDocs.length}` : `${allDocs.length}`) + (allDocs.length === 1 ? ' document' : ' documents')
    : '';
  els.docsBody.replaceChildren(...docs.map((d) => {
    const status = el('td', { class: 'status-' + d.status, text: d.status });
    if (d.status === 'failed' && d.error) status.textContent = 'failed: ' + d.error;
    const del = el('button', { type: 'button', class: 'delete', text: 'Delete', 'aria-label': 'Delete ' + d.name });
    del.addEventListener('click', () => deleteDoc(d));
    const ver = el('button', { type: 'button', class: 'new-version', text: 'New version', 'aria-label': 'Upload a new version of ' + d.name });
    ver.addEventListener('click', () => chooseVersion(d));
    const name = el('td', { class: 'name', title: show(d.name) }, show(d.name));
    if (d.version > 1) name.append(el('span', { class: 'version', text: ' v' + d.version }));
    // data-label: the column name, shown beside each cell when the table becomes cards on a phone.
    const cells = [
      name,
      el('td', { text: show(d.media_type) }),
      el('td', { class: 'num', text: humanSize(d.size_bytes) }),
      el('td', { class: 'num', text: show(d.pages) }),
      el('td', { class: 'num', text: show(d.chunks) }),
      status,
      el('td', { text: fmtDate(d.updated_at) }),
      el('td', { class: 'actions' }, ver, del),
    ];
    cells.forEach((td, i) => td.setAttribute('data-label', COLUMNS[i]));
    return el('tr', { 'data-doc-id': d.id }, ...cells);
  }));
}

async function deleteDoc(d) {
  if (!confirm(`Delete "${d.name}" and all its versions? This cannot be undone.`)) return;
  try {
    await api(`/v1/documents/${encodeURIComponent(d.id)}`, { method: 'DELETE' });
    setStatus(`Deleted "${d.name}".`, false);
  } catch (e) {
    setStatus(`Could not delete "${d.name}": ${describeError(e)}`);
  }
  loadDocs();
  loadCollections();
}

// A new version: any file, uploaded under the document's name (the server makes it version n+1).
let versionOf = null;
function chooseVersion(d) {
  versionOf = d;
  els.versionInput.value = '';
  els.versionInput.click();
}
els.versionInput.addEventListener('change', () => {
  const f = els.versionInput.files && els.versionInput.files[0];
  if (f && versionOf) upload([f], versionOf.name);
  versionOf = null;
});

els.docsFilter.addEventListener('input', renderDocs);
els.docsFilter.addEventListener('keydown', (e) => {
  if (e.key === 'Escape') { els.docsFilter.value = ''; renderDocs(); }
});
els.refresh.addEventListener('click', () => { loadDocs(); loadCollections(); });

// ---------- upload ----------
// One row per file: its name, a progress bar and the stage in words. Returns set(text, cls, fraction).
function uploadRow(name) {
  const state = el('span', { class: 'state', text: 'uploading…' });
  const bar = el('progress', { max: 1, 'aria-label': 'Progress of ' + name });
  const li = el('li', {}, el('span', { class: 'name', text: name }), bar, state);
  els.uploadList.prepend(li);
  return (text, cls, fraction) => {
    state.textContent = text;
    li.className = cls || '';
    if (cls === 'done') bar.value = 1;
    else if (typeof fraction === 'number') bar.value = Math.max(0, Math.min(1, fraction));
    else if (cls === 'failed') bar.value = 0;
    else bar.removeAttribute('value'); // indeterminate
  };
}

// POST a form with upload progress (fetch cannot report it); resolves to the JSON body.
function postForm(url, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', url);
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = 'text';
    xhr.upload.addEventListener('progress', (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); });
    xhr.addEventListener('load', () => {
      let body = null;
      try { body = xhr.responseText ? JSON.parse(xhr.responseText) : null; } catch { /* not JSON */ }
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else {
        const err = (body && body.error) || {};
        reject(new ApiError(xhr.status, err.code || 'http_' + xhr.status, err.message || `HTTP ${xhr.status}`));
      }
    });
    xhr.addEventListener('error', () => reject(new ApiError(0, 'unreachable', 'server unreachable')));
    xhr.addEventListener('abort', () => reject(new ApiError(0, 'aborted', 'upload aborted')));
    xhr.send(form);
  });
}

// Upload files into the current collection (created by its first upload). `asName`: upload a
// single file under that document name, i.e. as its next version.
async function upload(fileList, asName) {
  const files = Array.from(fileList || []);
  if (!files.length) return;
  const coll = collectionName();
  const names = files.map((f) => asName || f.name);
  const rows = names.map((n) => uploadRow(asName ? `${n} (new version, from ${files[0].name})` : n));
  const form = new FormData();
  files.forEach((f, i) => form.append('file', f, names[i]));
  let data;
  try {
    data = await postForm(`/v1/collections/${encodeURIComponent(coll)}/documents`, form, (frac) => {
      rows.forEach((set) => set(frac < 1 ? `uploading ${Math.round(frac * 100)}%` : 'checking…', 'active', frac < 1 ? frac : undefined));
    });
  } catch (e) {
    rows.forEach((set) => set('failed: ' + describeError(e), 'failed'));
    return;
  }
  (data.documents || []).forEach((doc, i) => {
    const set = rows[i] || uploadRow(doc.name);
    const label = doc.version > 1 ? ` (version ${doc.version})` : '';
    if (doc.duplicate && !doc.job_id) set('ready (duplicate, already ingested)', 'done');
    else if (doc.job_id) followJob(doc.job_id, set, doc.duplicate, label);
    else set('queued', '');
  });
  loadDocs();
  loadCollections();
}

const STAGES = { queued: 'queued', extract: 'extracting text', chunk: 'chunking', embed: 'embedding', index: 'indexing' };

function followJob(jobId, set, duplicate, label = '') {
  set((duplicate ? 'queued (duplicate)' : 'queued') + label, 'active');
  let finished = false;
  let close = () => {};
  const end = () => { finished = true; close(); loadDocs(); };
  const onProgress = (raw) => {
    let p;
    try { p = JSON.parse(raw); } catch { return; }
    if (p.status === 'done') {
      set('ready' + label + (p.total ? ` · ${p.total} chunk${p.total === 1 ? '' : 's'}` : ''), 'done');
    } else if (p.status === 'failed') {
      set('failed: ' + (p.error || 'unknown error'), 'failed');
    } else {
      const stage = STAGES[p.stage] || p.stage || p.status;
      set(p.total > 1 ? `${stage} ${p.done ?? 0}/${p.total}` : stage, 'active', p.total > 1 ? (p.done ?? 0) / p.total : undefined);
      return;
    }
    end();
  };
  const lost = () => {
    if (finished) return;
    set('progress unavailable (see the document list)', 'failed');
    loadDocs();
  };
  const url = `/v1/jobs/${encodeURIComponent(jobId)}/events`;
  if (sessionStorage.getItem(KEY_ITEM)) {
    // EventSource cannot send a key: the same stream over fetch.
    const ctl = new AbortController();
    close = () => ctl.abort();
    authFetch(url, { headers: { Accept: 'text/event-stream' }, signal: ctl.signal })
      .then((res) => {
        if (!res.ok) { lost(); return; }
        return readSSE(res.body, (name, raw) => {
          if (name === 'progress') onProgress(raw);
          else if (name === 'deleted') { set('deleted', 'failed'); end(); }
        }, () => {}).then(() => lost());
      })
      .catch((e) => { if (e.name !== 'AbortError') lost(); });
    return;
  }
  const es = new EventSource(url);
  close = () => es.close();
  es.addEventListener('progress', (ev) => onProgress(ev.data));
  es.addEventListener('deleted', () => { set('deleted', 'failed'); end(); });
  es.addEventListener('error', () => {
    if (finished || es.readyState !== EventSource.CLOSED) return; // browser retries on its own
    lost();
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

function renderAnswer() {
  cancelAnimationFrame(renderFrame);
  renderFrame = 0;
  els.answer.replaceChildren(renderMarkdown(answerText));
}

function scheduleRender() {
  if (!renderFrame) renderFrame = requestAnimationFrame(renderAnswer);
}

// ---------- sources and citations ----------
let sourceText = new Map(); // n -> passage text

function renderSources(sources) {
  sourceText = new Map();
  els.sources.replaceChildren(...(sources || []).map((s) => {
    sourceText.set(String(s.n), show(s.text));
    const where = [s.page != null ? 'page ' + s.page : '', s.heading || ''].filter(Boolean).join(' · ');
    const summary = el('summary', {},
      el('span', { class: 'n', text: `[${s.n}]` }), ' ',
      el('span', { class: 'doc', text: s.doc_name || s.doc_id || '' }));
    if (where) summary.append(' ', el('span', { class: 'where', text: where }));
    if (typeof s.score === 'number') summary.append(' ', el('span', { class: 'score', text: 'score ' + s.score.toFixed(3) }));
    return el('li', { id: 'source-' + s.n, class: 'source' },
      el('details', {}, summary, el('p', { class: 'passage', text: show(s.text) })));
  }));
}

const WORD = /[\p{L}\p{N}]+/gu;
const words = (t) => (t.toLowerCase().match(WORD) || []);

// The answer text a citation button vouches for: the text before it in its block, back to the
// previous group of citations (or, for a citation that opens a block, the text after it).
function citedText(btn) {
  const block = btn.closest('p, li, blockquote, h3, h4, h5, h6') || els.answer;
  const walker = document.createTreeWalker(block, NodeFilter.SHOW_TEXT | NodeFilter.SHOW_ELEMENT);
  let before = '';
  let after = '';
  let seenOther = false;
  let passed = false;
  for (let n = walker.currentNode; n; n = walker.nextNode()) {
    if (n.nodeType === Node.ELEMENT_NODE) {
      if (!n.classList.contains('cite')) continue;
      if (n === btn) { passed = true; continue; }
      if (passed) { if (after.trim()) break; continue; }
      seenOther = true;
      continue;
    }
    if (n.parentElement && n.parentElement.closest('.cite')) continue;
    if (passed) { after += n.data; continue; }
    if (seenOther && n.data.trim()) { before = ''; seenOther = false; }
    before += n.data;
  }
  return before.trim() ? before : after;
}

// Show source n's passage with the sentences the answer took from it marked; the whole
// passage when no sentence overlaps enough (a paraphrase, or a citation without text).
function highlightPassage(n, cited) {
  const li = document.getElementById('source-' + n);
  const text = sourceText.get(String(n));
  if (!li || text == null) return 0;
  const passage = li.querySelector('.passage');
  const answerWords = new Set(words(cited));
  // Sentences end at . ! ? before white space (not inside 3.1.2 or a URL), or at a line break.
  const parts = text.match(/(?:[^.!?\n]|[.!?]+(?=[^\s.!?]))*(?:[.!?]+["')\]]*(?=\s|$)|\n+|$)\s*/g).filter(Boolean);
  let marked = 0;
  const nodes = parts.map((part) => {
    const w = words(part);
    const hits = w.filter((x) => answerWords.has(x)).length;
    if (w.length >= 3 && hits / w.length >= 0.6) {
      marked++;
      return el('mark', { text: part });
    }
    return document.createTextNode(part);
  });
  if (marked) passage.replaceChildren(...nodes);
  else passage.replaceChildren(el('mark', { class: 'whole', text }));
  return marked;
}

function focusSource(n, btn) {
  const li = document.getElementById('source-' + n);
  if (!li) return;
  li.querySelector('details').open = true;
  for (const other of document.querySelectorAll('.source.highlight')) {
    other.classList.remove('highlight');
    const t = sourceText.get(other.id.slice('source-'.length));
    if (t != null) other.querySelector('.passage').textContent = t;
  }
  li.classList.add('highlight');
  highlightPassage(n, btn ? citedText(btn) : '');
  li.scrollIntoView({ behavior: 'smooth', block: 'nearest' });
  li.querySelector('summary').focus({ preventScroll: true });
}

els.answer.addEventListener('click', (e) => {
  const btn = e.target.closest('button.cite');
  if (btn) focusSource(btn.dataset.n, btn);
});

function showError(msg) {
  els.errorBox.textContent = msg;
  els.errorBox.hidden = false;
}

function renderMeta(meta, done) {
  const parts = [];
  const badge = (text, cls) => el('span', { class: 'badge ' + cls, text });
  parts.push(meta.cached ? badge('from cache', 'cached') : badge('fresh answer', 'fresh'));
  if (done.declined) parts.push(badge('declined: the sources do not answer this', 'declined'));
  const g = done.guard || {};
  if (g.action === 'fallback_extractive') parts.push(badge("the model's answer was not supported by its sources: showing the quoted passage instead", 'declined'));
  else if (g.action === 'declined') parts.push(badge("the model's answer was not supported by its sources", 'declined'));
  else if (g.action === 'flagged') parts.push(badge('some sentences are not supported by the cited sources', 'declined'));
  const info = [];
  if (done.answerer) info.push('answerer ' + done.answerer);
  if (meta.model) info.push('model ' + meta.model);
  const u = done.usage || {};
  info.push(`tokens ${u.prompt_tokens ?? 0} in / ${u.completion_tokens ?? 0} out`);
  if (typeof u.cost_usd === 'number') info.push('cost $' + u.cost_usd.toFixed(4));
  const t = done.timings_ms || {};
  const ms = (k, label) => { if (t[k] != null) info.push(`${label} ${Math.round(t[k])} ms`); };
  ms('retrieve', 'retrieval'); ms('first_token', 'first token'); ms('total', 'total');
  els.meta.replaceChildren(...parts.flatMap((p) => [p, ' ']), info.join(' · '));
  for (const n of done.citations || []) {
    const li = document.getElementById('source-' + n);
    if (li) li.classList.add('cited');
  }
}

// Parse an SSE byte stream; calls onEvent(name, data) for each event.
async function readSSE(body, onEvent, onBytes) {
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
    onBytes();
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

// The server sends keep-alive comments while it waits; this long without a byte means it is gone.
const STALL_MS = 90_000;

let asking = null; // the running ask(), so a conversation switch can wait for it to settle

function ask() {
  if (controller) return asking;
  asking = askOnce().finally(() => { asking = null; });
  return asking;
}

async function askOnce() {
  const question = els.question.value.trim();
  if (!question || controller) return;
  const ctl = new AbortController();
  controller = ctl;
  const coll = collectionName();
  // A conversation belongs to one collection: asking another one starts a new conversation.
  if (conv.id && conv.collection !== coll) {
    setStatus(`Started a new conversation: the previous one was about collection "${conv.collection}".`, false);
    resetConversation();
  }
  renderThread();
  showCurrent(question);
  clearAnswer();
  setBusy(true);
  let sources = [];
  let meta = {};
  let finished = false;
  let stalled = false;
  let stallTimer = 0;
  const alive = () => {
    clearTimeout(stallTimer);
    stallTimer = setTimeout(() => { stalled = true; ctl.abort(); }, STALL_MS);
  };
  alive();
  try {
    // The first question starts a conversation; follow-ups continue it (kb rewrites those that
    // refer back, and says so in done.conversation).
    const body = { question, collection: coll };
    if (conv.id) body.conversation_id = conv.id;
    else body.conversation = true;
    const res = await authFetch('/v1/ask', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify(body),
      signal: ctl.signal,
    });
    if (!res.ok) throw await errorFrom(res);
    if (!/^Started a new conversation/.test(els.status.textContent)) setStatus('');
    await readSSE(res.body, (name, raw) => {
      let data;
      try { data = JSON.parse(raw); } catch { return; }
      if (name === 'meta') {
        meta = data || {};
        if (meta.conversation_id && !conv.id) { conv.id = meta.conversation_id; conv.collection = coll; }
      } else if (name === 'sources') { sources = data || []; renderSources(data); }
      else if (name === 'token') { answerText += data.text || ''; scheduleRender(); }
      else if (name === 'done') {
        finished = true;
        if (typeof data.answer === 'string' && data.answer) answerText = data.answer;
        renderAnswer();
        renderMeta(meta, data);
        const c = data.conversation;
        if (c) showSearched(question, c.rewritten ? c.standalone_question : '');
        // The server stored this turn: it joins the thread when the next question is asked.
        if (conv.id && (!c || c.id === conv.id)) {
          conv.turns.push({
            question, answer: answerText,
            standalone_question: c ? c.standalone_question : question,
            sources: sources.map((s) => ({ n: s.n, doc_name: s.doc_name, page: s.page, heading: s.heading })),
          });
          // Ready for the follow-up, unless one is already being typed.
          if (els.question.value.trim() === question) els.question.value = '';
          renderConvState();
          loadConversations();
        }
      } else if (name === 'error') {
        finished = true;
        renderAnswer();
        const err = data.error || {};
        showError(describeError(new ApiError(-1, err.code || 'error', err.message || 'The server reported an error.')));
      }
    }, alive);
    if (!finished) { renderAnswer(); showError('The answer stream ended before the answer was complete (the server may have restarted). Try again.'); }
  } catch (e) {
    renderAnswer();
    if (e.name === 'AbortError' && stalled) {
      showError('The server stopped responding in the middle of the answer. Try again.');
    } else if (e.name === 'AbortError') {
      els.answer.append(el('p', { class: 'stopped', text: '(stopped)' }));
    } else if (e instanceof ApiError) {
      showError(describeError(e));
    } else {
      // fetch() rejects with a TypeError when the server is down or the connection drops.
      showError(describeError(new ApiError(0, 'unreachable', e.message)));
    }
  } finally {
    clearTimeout(stallTimer);
    controller = null;
    setBusy(false);
  }
}

function stop() { if (controller) controller.abort(); }

// ---------- conversations ----------
// The conversation the ask box continues: id null until the first answer's `meta` names it.
let conv = { id: null, collection: null, turns: [] };
let convs = [];

function resetConversation() {
  conv = { id: null, collection: null, turns: [] };
  renderConvState();
  markCurrentInList();
}

function renderConvState() {
  const n = conv.turns.length;
  els.convState.textContent = !conv.id
    ? 'New conversation'
    : `Conversation, ${n} question${n === 1 ? '' : 's'} so far: follow-ups continue it`;
}

// The current question, above its answer; "searched for" when kb rewrote it.
function showCurrent(question) {
  els.current.hidden = false;
  els.currentQ.replaceChildren(el('span', { class: 'who', text: 'Question: ' }), question);
  els.searchedFor.hidden = true;
  els.searchedFor.textContent = '';
}

function showSearched(question, standalone) {
  const visible = Boolean(standalone) && standalone.trim() !== question.trim();
  els.searchedFor.hidden = !visible;
  els.searchedFor.textContent = visible ? 'searched for: ' + standalone : '';
}

function clearCurrent() {
  els.current.hidden = true;
  els.currentQ.replaceChildren();
  showSearched('', '');
  clearAnswer();
}

// The answer area: text, sources, metadata and error, emptied for a new question.
function clearAnswer() {
  answerText = '';
  els.answer.replaceChildren();
  els.sources.replaceChildren();
  els.meta.replaceChildren();
  els.errorBox.hidden = true;
  els.errorBox.textContent = '';
}

// Earlier turns, compact: the question, what was searched for, the answer clipped to a few
// lines (a button shows it all). Its citations name their source (the passages are not kept).
function renderThread() {
  els.thread.replaceChildren(...conv.turns.map((t, i) => {
    const answer = el('div', { class: 'turn-a clipped' }, renderMarkdown(t.answer || ''));
    const byN = new Map((Array.isArray(t.sources) ? t.sources : []).map((s) => [String(s.n), s]));
    for (const b of answer.querySelectorAll('button.cite')) {
      const s = byN.get(b.dataset.n);
      const where = s ? [s.doc_name, s.page != null ? 'page ' + s.page : '', s.heading || ''].filter(Boolean).join(', ') : '';
      b.replaceWith(el('sup', { class: 'cite-ref', text: `[${b.dataset.n}]`, title: where }));
    }
    const li = el('li', { class: 'turn', 'data-n': i + 1 },
      el('p', { class: 'turn-q' }, el('span', { class: 'who', text: 'Question: ' }), t.question));
    if (t.standalone_question && t.standalone_question.trim() !== t.question.trim()) {
      li.append(el('p', { class: 'searched', text: 'searched for: ' + t.standalone_question }));
    }
    const more = el('button', { type: 'button', class: 'more', text: 'Show all', 'aria-expanded': 'false', hidden: true });
    more.addEventListener('click', () => {
      const open = answer.classList.toggle('clipped') === false;
      more.textContent = open ? 'Show less' : 'Show all';
      more.setAttribute('aria-expanded', String(open));
    });
    li.append(answer, more);
    return li;
  }));
  updateClipButtons();
}

// "Show all" only where the clipped answer does not fit (which depends on the window's width).
function updateClipButtons() {
  for (const li of els.thread.children) {
    const answer = li.querySelector('.turn-a');
    const more = li.querySelector('button.more');
    more.hidden = answer.classList.contains('clipped') && answer.scrollHeight <= answer.clientHeight + 1;
  }
}
let resizeTimer = 0;
window.addEventListener('resize', () => { clearTimeout(resizeTimer); resizeTimer = setTimeout(updateClipButtons, 150); });

// Wait for a running answer to stop, so that switching conversations does not mix them.
async function settle() {
  if (!controller) return;
  const running = asking;
  stop();
  await running;
}

async function newConversation() {
  await settle();
  resetConversation();
  renderThread();
  clearCurrent();
  setStatus('New conversation: your next question starts it.', false);
  els.question.focus();
}

let convSeq = 0;
async function loadConversations() {
  const seq = ++convSeq;
  let data;
  try {
    data = await api('/v1/conversations');
  } catch (e) {
    if (seq === convSeq) setStatus('Could not load conversations: ' + describeError(e));
    return;
  }
  if (seq !== convSeq) return;
  if (/^Could not load conversations/.test(els.status.textContent)) setStatus('');
  // A conversation whose first answer failed holds no turn: nothing to reopen.
  convs = (data.conversations || []).filter((c) => c.turn_count > 0 || c.id === conv.id);
  renderConversations();
}

function renderConversations() {
  els.convEmpty.hidden = convs.length > 0;
  els.convCount.textContent = convs.length ? String(convs.length) : '';
  els.convList.replaceChildren(...convs.map((c) => {
    const title = c.title || '(no question answered yet)';
    const n = c.turn_count;
    const open = el('button', { type: 'button', class: 'conv-open', 'aria-label': `Open conversation "${title}"` },
      el('span', { class: 'conv-title', text: title }),
      el('span', { class: 'conv-info', text: [fmtDate(c.updated_at), `${n} question${n === 1 ? '' : 's'}`, 'collection ' + c.collection].join(' · ') }));
    open.addEventListener('click', () => openConversation(c.id));
    const del = el('button', { type: 'button', class: 'delete', text: 'Delete', 'aria-label': `Delete conversation "${title}"` });
    del.addEventListener('click', () => deleteConversation(c));
    return el('li', { 'data-conv-id': c.id }, open, del);
  }));
  markCurrentInList();
}

function markCurrentInList() {
  for (const li of els.convList.children) {
    const cur = Boolean(conv.id) && li.dataset.convId === conv.id;
    li.classList.toggle('current', cur);
    const b = li.querySelector('.conv-open');
    if (cur) b.setAttribute('aria-current', 'true'); else b.removeAttribute('aria-current');
  }
}

// Reopen a past conversation: its turns become the thread, and the next question continues it.
async function openConversation(id) {
  await settle();
  let c;
  try {
    c = await api(`/v1/conversations/${encodeURIComponent(id)}`);
  } catch (e) {
    setStatus('Could not open the conversation: ' + describeError(e));
    loadConversations();
    return;
  }
  conv = {
    id: c.id,
    collection: c.collection,
    turns: (c.turns || []).map((t) => ({
      question: t.question, answer: t.answer, standalone_question: t.standalone_question, sources: t.sources,
    })),
  };
  if (c.collection !== collectionName()) {
    els.collection.value = c.collection;
    loadDocs();
  }
  clearCurrent();
  renderThread();
  renderConvState();
  markCurrentInList();
  setStatus(`Reopened "${c.title || c.id}": your next question continues it.`, false);
  els.question.focus();
}

async function deleteConversation(c) {
  const title = c.title || c.id;
  if (!confirm(`Delete the conversation "${title}"? This cannot be undone.`)) return;
  try {
    await api(`/v1/conversations/${encodeURIComponent(c.id)}`, { method: 'DELETE' });
    setStatus(`Deleted the conversation "${title}".`, false);
  } catch (e) {
    if (e.code !== 'conversation_not_found') {
      setStatus(`Could not delete the conversation "${title}": ${describeError(e)}`);
      return;
    }
  }
  if (conv.id === c.id) {
    await settle();
    resetConversation();
    renderThread();
    clearCurrent();
  }
  // Keep the keyboard where it was: on the next conversation, or the list's heading area.
  const i = convs.findIndex((x) => x.id === c.id);
  await loadConversations();
  const next = els.convList.children[Math.min(Math.max(i, 0), els.convList.children.length - 1)];
  (next ? next.querySelector('.conv-open') : els.newConv).focus();
}

els.newConv.addEventListener('click', newConversation);
els.refreshConvs.addEventListener('click', loadConversations);

els.askBtn.addEventListener('click', ask);
els.stopBtn.addEventListener('click', stop);
els.question.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    ask();
  } else if (e.key === 'Escape' && controller) {
    e.preventDefault();
    stop();
  }
});

// ---------- start ----------
renderConvState();
loadCollections();
loadDocs();
loadConversations();
