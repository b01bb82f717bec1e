// The web page in a real browser: Debian's chromium driven by playwright-core, against real kb
// servers on random loopback ports. Screenshots of each step go to test-artifacts/web/.
//
// Two servers: one with the default extractive answerer (real retrieval, real answers quoted
// from the uploaded documents), and one whose OpenAI-compatible upstream is a scripted fault
// injector below: it is what lets the test pace tokens (to see them arrive one by one), keep a
// stream running (to stop it), answer with hostile Markdown, rate-limit and stall.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '../..');
const bin = process.env.KB_BIN;
const fixtures = process.env.KB_TEST_FIXTURES || join(root, 'test-artifacts/fixtures');
const shots = join(root, 'test-artifacts/web');
mkdirSync(shots, { recursive: true });

let browser, tmp, leak, upstream;
const servers = [];

function listen(handler) {
  const srv = createServer(handler);
  return new Promise((ok) => srv.listen(0, '127.0.0.1', () => ok(srv)));
}
const portOf = (srv) => srv.address().port;

// Anything that reaches this port is a leak: the page must never fetch an answer's image.
const leaked = [];

// The scripted upstream: picks its behaviour from a keyword in the question.
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function scripted(req, res) {
  let body = '';
  for await (const c of req) body += c;
  let question = '';
  try {
    const msgs = JSON.parse(body).messages || [];
    const last = msgs.filter((m) => m.role === 'user').pop();
    question = String(last?.content || '').split('Question:').pop();
  } catch { /* not JSON: default answer */ }
  const chunk = (text) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: text } }] })}\n\n`;
  const stream = async (pieces, gapMs) => {
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const p of pieces) {
      if (res.destroyed) return;
      res.write(chunk(p));
      await sleep(gapMs);
    }
    res.write(`data: ${JSON.stringify({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] })}\n\n`);
    res.write(`data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 321, completion_tokens: pieces.length } })}\n\n`);
    res.end('data: [DONE]\n\n');
  };
  if (/leak/i.test(question)) {
    const url = `http://127.0.0.1:${portOf(leak)}`;
    await stream([`Look: ![x](${url}/leak?q=secret) and `, `<img src="${url}/leak2"> and `,
      `[a link](javascript:alert(1)) [1]`], 20);
  } else if (/slow/i.test(question)) {
    await stream(Array.from({ length: 300 }, (_, i) => `word${i} `), 200);
  } else if (/busy/i.test(question)) {
    res.writeHead(429, { 'content-type': 'application/json', 'retry-after': '600' });
    res.end(JSON.stringify({ error: { message: 'scripted rate limit' } }));
  } else if (/stall/i.test(question)) {
    res.writeHead(200, { 'content-type': 'text/event-stream' }); // and then nothing
  } else if (/lighthouse/i.test(question)) {
    await stream(['The ', '**lamp** ', 'turns ', 'once ', 'every ', 'twelve ', 'seconds, ', 'from ', 'dusk ', 'to ', 'dawn ', '[1].'], 120);
  } else {
    await stream(['A default answer [1]'], 0);
  }
}

function startServer(name, env = {}) {
  const dir = join(tmp, name);
  const server = spawn(bin, ['serve', '--addr', '127.0.0.1:0', '--data-dir', join(dir, 'data')], {
    // kb reads every KB_* variable as configuration: pass only the ones meant for it.
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KB_') || k === 'KB_MODELS_DIR')),
      KB_LOG: process.env.KB_LOG || 'warn',
      ...env,
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  servers.push(server);
  return new Promise((ok, fail) => {
    let buf = '';
    const timer = setTimeout(() => fail(new Error('kb did not start')), 120_000);
    server.stdout.on('data', (d) => {
      buf += d;
      const m = buf.match(/kb listening on (http:\/\/\S+)/);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
    server.on('exit', (code) => fail(new Error(`kb exited with ${code}`)));
  });
}

async function newPage(width = 1100, height = 900) {
  const page = await browser.newPage({ viewport: { width, height } });
  page.dialogs = [];
  page.on('dialog', (d) => { page.dialogs.push(d.message()); d.accept(); });
  page.requests = [];
  page.on('request', (r) => page.requests.push(r.url()));
  // Script errors and CSP violations (an inline script or style would be one) fail the test.
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(e.message));
  page.on('console', (m) => { if (/Content Security Policy/i.test(m.text())) page.errors.push(m.text()); });
  return page;
}
const shot = (page, name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

function assertOnlySelf(page, base) {
  for (const u of page.requests) assert.ok(u.startsWith(base) || u.startsWith('data:'), `unexpected request ${u}`);
  assert.deepEqual(leaked, [], 'nothing reached the leak listener');
  assert.deepEqual(page.errors, [], 'no script errors or CSP violations');
}

// Count the answer's renders while a question streams; resolves with the count seen before the
// answer's metadata (written at `done`) appeared.
async function watchAnswer(page) {
  await page.evaluate(() => {
    window.__renders = 0;
    window.__rendersBeforeDone = null;
    window.__obs?.disconnect();
    window.__obs = new MutationObserver(() => {
      if (document.querySelector('#answer-meta').textContent) {
        if (window.__rendersBeforeDone == null) window.__rendersBeforeDone = window.__renders;
      } else if (document.querySelector('#answer').textContent) {
        window.__renders++;
      }
    });
    window.__obs.observe(document.querySelector('#answer'), { childList: true, subtree: true, characterData: true });
    window.__obs.observe(document.querySelector('#answer-meta'), { childList: true, subtree: true, characterData: true });
  });
}

async function ask(page, question) {
  await page.fill('#question', question);
  await page.press('#question', 'Enter');
}

before(async () => {
  assert.ok(bin, 'KB_BIN must point at the kb binary');
  tmp = mkdtempSync(join(tmpdir(), 'kb-web-'));
  leak = await listen((req, res) => { leaked.push(req.url); res.end('leaked'); });
  upstream = await listen((req, res) => { scripted(req, res).catch(() => res.destroy()); });
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  for (const s of servers) s.kill('SIGKILL');
  leak?.close();
  upstream?.closeAllConnections?.();
  upstream?.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('upload, watch indexing, ask, follow a citation, new version, filter, delete', async () => {
  const base = await startServer('extractive');
  const page = await newPage();
  await page.goto(base + '/');
  // A new collection: typed, then created by the first upload.
  await page.fill('#collection', 'web');
  await page.press('#collection', 'Enter');
  await page.waitForFunction(() => /does not exist yet/.test(document.querySelector('#docs-empty').textContent));

  // Upload a PDF, an HTML page and a note whose text holds a Markdown image; all reach "ready"
  // through the job event streams.
  const note = join(tmp, 'beacon-notes.txt');
  writeFileSync(note, 'Harbour log, spring season.\n\n' +
    `The harbour beacon flashes green twice ![x](http://127.0.0.1:${portOf(leak)}/leak?q=secret) every night at the pier.\n\n` +
    'Fishing boats return before the tide turns.\n');
  await page.setInputFiles('#file-input', [join(fixtures, 'bashref-3pages.pdf'), join(fixtures, 'gzip.html'), note]);
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll('#upload-list li')];
    return items.length === 3 && items.every((li) => /ready/.test(li.textContent));
  }, null, { timeout: 240_000 });
  await page.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#docs-table tbody tr')];
    return rows.length === 3 && rows.every((r) => /ready/.test(r.textContent));
  }, null, { timeout: 30_000 });
  await shot(page, '1-uploaded');
  const table = await page.textContent('#docs-table');
  assert.match(table, /bashref-3pages\.pdf/);
  assert.match(table, /gzip\.html/);
  // name, type, size, pages, chunks, status, updated
  const cells = await page.locator('#docs-table tbody tr', { hasText: 'bashref-3pages.pdf' }).locator('td').allTextContents();
  assert.equal(cells[1], 'pdf');
  assert.match(cells[2], /^1\.\d MB$/, 'size');
  assert.equal(cells[3], '3', 'pages');
  assert.match(cells[4], /^[1-9]\d*$/, 'chunks');
  assert.equal(cells[5], 'ready');
  assert.ok(!Number.isNaN(Date.parse(cells[6])), `updated time: ${cells[6]}`);

  // Ask (Shift+Enter is a new line, Enter sends); the answer and its sources appear.
  await page.fill('#question', 'What is the Bash');
  await page.press('#question', 'Shift+Enter');
  await page.type('#question', 'escape character?');
  assert.equal(await page.inputValue('#question'), 'What is the Bash\nescape character?');
  assert.equal(await page.textContent('#answer'), '', 'Shift+Enter did not send');
  await page.press('#question', 'Enter');
  await page.waitForFunction(() => document.querySelector('#answer-meta').textContent.length > 0, null, { timeout: 60_000 });
  await shot(page, '2-answered');
  const answer = await page.textContent('#answer');
  assert.match(answer.toLowerCase(), /backslash/);
  assert.match(await page.textContent('#answer-meta'), /fresh answer|from cache/);
  assert.match(await page.textContent('#answer-meta'), /tokens \d+ in \/ \d+ out/);
  assert.match(await page.textContent('#answer-meta'), /total \d+ ms/);
  assert.ok(await page.locator('#sources li.source').count() >= 1, 'sources listed');
  assert.match(await page.textContent('#sources'), /bashref-3pages\.pdf/);
  assert.match(await page.textContent('#sources'), /score \d\.\d{3}/);

  // Clicking a citation opens its source with the quoted sentences highlighted.
  const cite = page.locator('#answer .cite').first();
  const n = await cite.getAttribute('data-n');
  await cite.click();
  await page.waitForSelector(`#source-${n}.highlight details[open] .passage mark`);
  const marked = await page.$$eval(`#source-${n} .passage mark`, (ms) => ms.map((m) => m.textContent));
  const norm = (t) => t.replace(/\s+/g, ' ').trim().toLowerCase();
  assert.match(norm(marked.join(' ')), /backslash/, 'the cited sentence is marked');
  for (const m of marked) assert.ok(norm(answer).includes(norm(m)), `marked text comes from the answer: ${m}`);
  const passage = await page.textContent(`#source-${n} .passage`);
  assert.ok(norm(marked.join(' ')).length < norm(passage).length, 'only part of the passage is marked');
  await shot(page, '3-citation');

  // An answer quoting a document that contains a Markdown image: shown as text, nothing fetched.
  await ask(page, 'What does the harbour beacon flash every night at the pier?');
  await page.waitForFunction(() => document.querySelector('#answer-meta').textContent.length > 0, null, { timeout: 60_000 });
  await shot(page, '4-image-in-source');
  assert.match(await page.textContent('#answer'), /harbour beacon flashes green/);
  assert.match(await page.textContent('#answer'), /\[image: x\]/);
  assert.equal(await page.locator('#answer img').count(), 0);

  // A new version of the note, through its row's button: version 2, ready.
  const v2 = join(tmp, 'beacon-v2.txt');
  writeFileSync(v2, 'Harbour log, summer season.\n\nThe harbour beacon now flashes white three times.\n');
  const noteRow = page.locator('#docs-table tbody tr', { hasText: 'beacon-notes.txt' });
  const [chooser] = await Promise.all([page.waitForEvent('filechooser'), noteRow.locator('button.new-version').click()]);
  await chooser.setFiles(v2);
  await page.waitForFunction(() => {
    const row = [...document.querySelectorAll('#docs-table tbody tr')].find((r) => r.textContent.includes('beacon-notes.txt'));
    return row && / v2/.test(row.textContent) && /ready/.test(row.textContent);
  }, null, { timeout: 60_000 });
  await shot(page, '5-new-version');
  let docs = await fetch(`${base}/v1/collections/web/documents`).then((r) => r.json());
  assert.equal(docs.documents.find((d) => d.name === 'beacon-notes.txt').version, 2);
  assert.equal(docs.documents.length, 3);

  // Filter by name.
  await page.fill('#docs-filter', 'GZIP');
  await page.waitForFunction(() => document.querySelectorAll('#docs-table tbody tr').length === 1);
  assert.match(await page.textContent('#docs-table tbody'), /gzip\.html/);
  assert.match(await page.textContent('#docs-count'), /1 of 3/);
  await shot(page, '6-filtered');

  // Delete the HTML document, after a confirmation that names it.
  await page.locator('#docs-table tbody tr', { hasText: 'gzip.html' }).locator('button.delete').click();
  await page.waitForFunction(() => !document.querySelector('#docs-table').textContent.includes('gzip.html'), null, { timeout: 30_000 });
  assert.equal(page.dialogs.length, 1);
  assert.match(page.dialogs[0], /Delete "gzip\.html"/);
  await page.fill('#docs-filter', '');
  await page.waitForFunction(() => document.querySelectorAll('#docs-table tbody tr').length === 2);
  await shot(page, '7-deleted');
  docs = await fetch(`${base}/v1/collections/web/documents`).then((r) => r.json());
  assert.deepEqual(docs.documents.map((d) => d.name).sort(), ['bashref-3pages.pdf', 'beacon-notes.txt']);

  // Readable at phone width: nothing wider than the screen but the table's own scroller.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, '8-phone');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a phone`);

  // Hostile Markdown straight into the renderer: no element that could fetch or run anything.
  const out = await page.evaluate(async (leakUrl) => {
    const { renderMarkdown } = await import('/markdown.js');
    const div = document.createElement('div');
    document.body.append(div);
    div.append(renderMarkdown([
      `![a](${leakUrl}/1) ![](${leakUrl}/2 "t") [![b](${leakUrl}/3)](https://example.com/)`,
      `<img src="${leakUrl}/4" onerror="window.__pwned=1"> <script>window.__pwned=1</script>`,
      '[js](javascript:window.__pwned=1) [data](data:text/html,x) [rel](/v1/info) <javascript:x>',
      '[ok](https://example.org/a_(b)) **bold _and em_** `<b>code</b>` [2]',
      '```html\n' + `<iframe src="${leakUrl}/5"></iframe>` + '\n```',
      '- one\n- two\n  1. nested',
    ].join('\n\n')));
    await new Promise((r) => setTimeout(r, 300));
    const r = {
      fetching: div.querySelectorAll('img, script, iframe, object, embed, video, audio, source, link, style, svg').length,
      links: [...div.querySelectorAll('a')].map((a) => [a.getAttribute('href'), a.rel, a.textContent]),
      pwned: window.__pwned || 0,
      strong: div.querySelector('strong em')?.textContent,
      code: div.querySelector('p code')?.textContent,
      pre: div.querySelector('pre code')?.textContent,
      cite: div.querySelector('.cite')?.dataset.n,
      nested: div.querySelector('ul li ol li')?.textContent,
      text: div.textContent,
    };
    div.remove();
    return r;
  }, `http://127.0.0.1:${portOf(leak)}`);
  assert.equal(out.fetching, 0);
  assert.equal(out.pwned, 0);
  assert.deepEqual(out.links, [
    ['https://example.com/', 'noopener noreferrer nofollow', '[image: b]'],
    ['https://example.org/a_(b)', 'noopener noreferrer nofollow', 'ok'],
  ]);
  assert.equal(out.strong, 'and em');
  assert.equal(out.code, '<b>code</b>');
  assert.equal(out.pre, `<iframe src="http://127.0.0.1:${portOf(leak)}/5"></iframe>`);
  assert.equal(out.cite, '2');
  assert.equal(out.nested, 'nested');
  assert.match(out.text, /\[image: a\] \[image\]/);
  assert.match(out.text, /<img src=/, 'raw HTML shows as text');

  await sleep(500);
  assertOnlySelf(page, base);
  await page.close();
});

test('streaming, stop, hostile model output, upstream errors, server down', async () => {
  const base = await startServer('llm', {
    KB_LLM__PROVIDER: 'openai',
    KB_LLM__MODEL: 'scripted',
    KB_LLM__BASE_URL: `http://127.0.0.1:${portOf(upstream)}/v1`,
    KB_LLM__FIRST_TOKEN_TIMEOUT_SECS: '1',
    // The hostile answer below cites nothing it says: the grounding guard would replace it with
    // the extractive answer before the renderer sees it. Flag mode keeps it (with a badge).
    KB_LLM__GUARD: 'flag',
  });
  const page = await newPage(390, 844); // phone width throughout
  await page.goto(base + '/');
  await page.fill('#collection', 'llm');
  await page.press('#collection', 'Enter');
  const doc = join(tmp, 'lighthouse.txt');
  writeFileSync(doc, 'The lighthouse lamp turns once every twelve seconds, from dusk to dawn.\n');
  await page.setInputFiles('#file-input', doc);
  await page.waitForFunction(() => /ready/.test(document.querySelector('#upload-list li')?.textContent || ''), null, { timeout: 60_000 });

  // Tokens arrive one by one: the answer is rendered several times before `done`.
  await watchAnswer(page);
  await ask(page, 'How often does the lighthouse lamp turn?');
  await page.waitForFunction(() => document.querySelector('#answer-meta').textContent.length > 0, null, { timeout: 60_000 });
  const before = await page.evaluate(() => window.__rendersBeforeDone);
  assert.ok(before >= 3, `answer rendered ${before} times before done`);
  assert.equal(await page.textContent('#answer strong'), 'lamp');
  assert.match(await page.textContent('#answer'), /twelve seconds/);
  assert.match(await page.textContent('#answer-meta'), /tokens 321 in \/ 12 out/);
  assert.match(await page.textContent('#answer-meta'), /model scripted/);
  await page.locator('#answer .cite[data-n="1"]').click();
  await page.waitForSelector('#source-1.highlight .passage mark');
  await shot(page, '9-streamed');

  // A model answer with an image, raw HTML and a javascript: link: text, nothing fetched.
  await ask(page, 'Does the lighthouse leak?');
  await page.waitForFunction(() => document.querySelector('#answer-meta').textContent.length > 0, null, { timeout: 60_000 });
  assert.equal(await page.locator('#answer img, #answer a').count(), 0);
  const hostile = await page.textContent('#answer');
  // The server neutralised them (the page would too): an image is its alt text, the tag and
  // the javascript: link are gone.
  assert.match(hostile, /\[image: x\]/);
  assert.doesNotMatch(hostile, /<img|javascript:|leak/);
  assert.match(hostile, /a link/);
  await shot(page, '10-hostile-model-output');

  // Stop a running answer: the stream ends, the page is usable again, nothing more arrives.
  await ask(page, 'Tell me about the lighthouse, slowly.');
  await page.waitForFunction(() => /word3 /.test(document.querySelector('#answer').textContent), null, { timeout: 30_000 });
  assert.equal(await page.isEnabled('#stop-btn'), true);
  await page.click('#stop-btn');
  await page.waitForSelector('#answer .stopped');
  const stoppedAt = await page.textContent('#answer');
  await sleep(1000);
  assert.equal(await page.textContent('#answer'), stoppedAt, 'nothing arrives after Stop');
  assert.equal(await page.isEnabled('#ask-btn'), true);
  assert.equal(await page.isHidden('#ask-spinner'), true);
  assert.equal(await page.textContent('#answer-meta'), '');
  await shot(page, '11-stopped');

  // Upstream rate limit and timeout: readable messages, no spinner left turning.
  await ask(page, 'Is the lighthouse busy?');
  await page.waitForSelector('#error-box:not([hidden])', { timeout: 30_000 });
  assert.match(await page.textContent('#error-box'), /rate-limiting/);
  assert.equal(await page.isHidden('#ask-spinner'), true);
  await shot(page, '12-rate-limited');
  await ask(page, 'Does the lighthouse stall?');
  await page.waitForFunction(() => /did not answer in time/.test(document.querySelector('#error-box').textContent), null, { timeout: 60_000 });
  assert.equal(await page.isHidden('#ask-spinner'), true);
  await shot(page, '13-timeout');

  // The server goes away: the page says so.
  const srv = servers[servers.length - 1];
  srv.kill('SIGKILL');
  await new Promise((r) => srv.exitCode != null || srv.signalCode != null ? r() : srv.once('exit', r));
  await ask(page, 'How often does the lighthouse lamp turn?');
  await page.waitForFunction(() => /Cannot reach the kb server/.test(document.querySelector('#error-box').textContent), null, { timeout: 30_000 });
  assert.equal(await page.isEnabled('#ask-btn'), true);
  assert.equal(await page.isHidden('#ask-spinner'), true);
  await shot(page, '14-server-down');

  assertOnlySelf(page, base);
  await page.close();
});

test('conversations: follow-ups, the thread, a new one, reopen, delete', async () => {
  const base = await startServer('conversations');
  const page = await newPage();
  // Every question the page sends, as JSON: which conversation it named.
  const asks = [];
  page.on('request', (r) => { if (r.url() === base + '/v1/ask') asks.push(JSON.parse(r.postData())); });
  await page.goto(base + '/');
  await page.waitForFunction(() => /No conversations yet/.test(document.querySelector('#conv-empty').textContent)
    && !document.querySelector('#conv-empty').hidden);
  assert.match(await page.textContent('#conv-state'), /New conversation/);
  await page.fill('#collection', 'conv');
  await page.press('#collection', 'Enter');
  const doc = join(tmp, 'harbour-light.txt');
  writeFileSync(doc, 'The Harbour Lighthouse.\n\n' +
    'The lighthouse lamp turns once every twelve seconds, from dusk to dawn.\n\n' +
    'Its white light can be seen twenty miles out at sea on a clear night.\n\n' +
    "The keeper's cottage beside the tower is painted blue with a red door.\n");
  await page.setInputFiles('#file-input', doc);
  await page.waitForFunction(() => /ready/.test(document.querySelector('#upload-list li')?.textContent || ''), null, { timeout: 120_000 });
  const answered = (n) => page.waitForFunction((n) => document.querySelector('#answer-meta').textContent.length > 0
    && document.querySelectorAll('#thread li.turn').length === n, n, { timeout: 60_000 });

  // The first question starts a conversation.
  const q1 = 'How often does the lighthouse lamp turn?';
  await ask(page, q1);
  await answered(0);
  assert.match(await page.textContent('#answer'), /twelve seconds/);
  assert.match(await page.textContent('#current-q'), /How often does the lighthouse lamp turn\?/);
  assert.equal(await page.isHidden('#searched-for'), true, 'a first question is not rewritten');
  assert.equal(asks.length, 1);
  assert.equal(asks[0].conversation, true);
  assert.equal(asks[0].conversation_id, undefined);
  await page.waitForSelector('#conv-list li');
  const list1 = await fetch(`${base}/v1/conversations`).then((r) => r.json());
  assert.equal(list1.conversations.length, 1);
  const first = list1.conversations[0].id;
  assert.equal(await page.getAttribute('#conv-list li', 'data-conv-id'), first);
  assert.equal(await page.inputValue('#question'), '', 'the box is ready for a follow-up');

  // A follow-up that refers back ("its"): sent with the conversation's id, rewritten by kb, and
  // the page shows what was searched for and both turns (the first one compact, above).
  const q2 = 'How far out can its light be seen?';
  await ask(page, q2);
  await answered(1);
  assert.equal(asks.length, 2);
  assert.equal(asks[1].conversation_id, first);
  assert.equal(asks[1].conversation, undefined);
  const turn1 = page.locator('#thread li.turn').first();
  assert.match(await turn1.locator('.turn-q').textContent(), /How often does the lighthouse lamp turn\?/);
  assert.match(await turn1.locator('.turn-a').textContent(), /twelve seconds/);
  assert.equal(await turn1.locator('button').count() <= 1, true, 'old citations are not live buttons');
  assert.match(await page.textContent('#current-q'), /How far out can its light be seen\?/);
  assert.equal(await page.isVisible('#searched-for'), true);
  const searched = await page.textContent('#searched-for');
  assert.match(searched, /^searched for: How far out can its light be seen\? .*lighthouse/);
  assert.match(await page.textContent('#answer'), /twenty miles/);
  assert.match(await page.textContent('#conv-state'), /2 questions/);
  // What kb stored agrees with what the page shows.
  let stored = await fetch(`${base}/v1/conversations/${first}`).then((r) => r.json());
  assert.deepEqual(stored.turns.map((t) => t.question), [q1, q2]);
  assert.equal('searched for: ' + stored.turns[1].standalone_question, searched);
  await shot(page, '15-follow-up');

  // A new conversation: the thread and the answer are cleared; the next question starts afresh.
  await page.click('#new-conv');
  assert.equal(await page.locator('#thread li').count(), 0);
  assert.equal(await page.textContent('#answer'), '');
  assert.equal(await page.isHidden('#current'), true);
  assert.match(await page.textContent('#conv-state'), /New conversation/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'question');
  const q3 = "What colour is the keeper's cottage?";
  await ask(page, q3);
  await answered(0);
  assert.match(await page.textContent('#answer'), /blue/);
  assert.equal(asks[2].conversation, true);
  assert.equal(asks[2].conversation_id, undefined);
  // The list: newest first, with the first question and the time.
  await page.waitForFunction(() => document.querySelectorAll('#conv-list li').length === 2);
  const titles = await page.locator('#conv-list .conv-title').allTextContents();
  assert.deepEqual(titles, [q3, q1]);
  const info = await page.locator('#conv-list li', { hasText: q1 }).locator('.conv-info').textContent();
  assert.match(info, /2 questions/);
  assert.ok(!Number.isNaN(Date.parse(info.split(' · ')[0])), `time in ${info}`);
  assert.equal(await page.getAttribute('#conv-list li:first-child .conv-open', 'aria-current'), 'true');
  await shot(page, '16-new-conversation');

  // Reopen the first with the keyboard: its turns come back and the next question continues it.
  await page.locator('#conv-list li', { hasText: q1 }).locator('.conv-open').focus();
  await page.keyboard.press('Enter');
  await page.waitForFunction(() => document.querySelectorAll('#thread li.turn').length === 2);
  assert.equal(await page.isHidden('#current'), true);
  assert.deepEqual(await page.locator('#thread .turn-q').allTextContents(), ['Question: ' + q1, 'Question: ' + q2]);
  assert.match(await page.locator('#thread li.turn').nth(1).locator('.searched').textContent(), /searched for: .*lighthouse/);
  assert.match(await page.textContent('#conv-state'), /2 questions/);
  assert.equal(await page.evaluate(() => document.activeElement.id), 'question');
  await ask(page, 'Is it white?');
  await answered(2);
  assert.equal(asks[3].conversation_id, first);
  stored = await fetch(`${base}/v1/conversations/${first}`).then((r) => r.json());
  assert.equal(stored.turns.length, 3);
  await shot(page, '17-reopened');

  // Readable on a phone with the thread and the list shown.
  await page.setViewportSize({ width: 390, height: 844 });
  await shot(page, '18-conversations-phone');
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `page is ${overflow}px wider than a phone`);
  // Earlier answers are clipped to a few lines; where one does not fit, "Show all" opens it.
  await sleep(400);
  const clips = await page.$$eval('#thread li.turn', (lis) => lis.map((li) => {
    const a = li.querySelector('.turn-a');
    return { overflows: a.scrollHeight > a.clientHeight + 1, button: !li.querySelector('button.more').hidden };
  }));
  for (const c of clips) assert.ok(!c.overflows || c.button, `a clipped answer has its button: ${JSON.stringify(clips)}`);
  const more = page.locator('#thread li.turn', { hasText: q2 }).locator('button.more');
  assert.equal(await more.isVisible(), true, 'the longer earlier answer is clipped at phone width');
  await more.focus();
  await page.keyboard.press('Enter');
  assert.equal(await more.getAttribute('aria-expanded'), 'true');
  assert.match(await more.textContent(), /Show less/);
  assert.equal(await page.locator('#thread li.turn', { hasText: q2 }).locator('.turn-a').evaluate((a) => a.scrollHeight <= a.clientHeight + 1), true);
  await shot(page, '18b-conversations-phone-expanded');
  await page.setViewportSize({ width: 1100, height: 900 });

  // Delete it, after a confirmation that names it: gone from the list and from the API.
  await page.waitForFunction((t) => document.querySelector('#conv-list .conv-title')?.textContent === t, q1);
  await page.locator('#conv-list li', { hasText: q1 }).locator('button.delete').click();
  await page.waitForFunction(() => document.querySelectorAll('#conv-list li').length === 1);
  assert.equal(page.dialogs.length, 1);
  assert.match(page.dialogs[0], /Delete the conversation "How often does the lighthouse lamp turn\?"/);
  assert.deepEqual(await page.locator('#conv-list .conv-title').allTextContents(), [q3]);
  assert.equal(await page.locator('#thread li').count(), 0, 'the deleted conversation is no longer shown');
  assert.match(await page.textContent('#conv-state'), /New conversation/);
  assert.equal((await fetch(`${base}/v1/conversations/${first}`)).status, 404);
  await shot(page, '19-conversation-deleted');

  assertOnlySelf(page, base);
  await page.close();
});

test('a server with API keys: the page asks for one, keeps it for the tab, and works', async () => {
  const dir = join(tmp, 'keys');
  // A key made on the data dir before the server starts, as an operator would.
  const { spawnSync } = await import('node:child_process');
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KB_') || k === 'KB_MODELS_DIR'));
  const made = spawnSync(bin, ['keys', 'create', '--name', 'web', '--scope', '*', '--data-dir', join(dir, 'data'), '--json'], { env });
  assert.equal(made.status, 0, String(made.stderr));
  const key = JSON.parse(String(made.stdout)).key;
  const base = await startServer('keys', { KB_AUTH__MODE: 'keys' });
  assert.equal((await fetch(`${base}/v1/collections`)).status, 401);
  const page = await newPage();
  const prompts = [];
  page.removeAllListeners('dialog');
  page.on('dialog', (d) => { prompts.push(d.message()); d.accept(key); });
  await page.goto(base + '/');
  await page.waitForFunction(() => sessionStorage.getItem('kb-api-key'));
  assert.deepEqual(prompts, ['This kb server needs an API key:']);
  await page.fill('#collection', 'locked');
  await page.press('#collection', 'Enter');
  const doc = join(tmp, 'vault-hours.txt');
  writeFileSync(doc, 'The Vault.\n\nThe vault opens at nine in the morning and closes at five.\n');
  await page.setInputFiles('#file-input', doc);
  // Progress arrives over the keyed event stream, upload and all.
  await page.waitForFunction(() => /ready/.test(document.querySelector('#upload-list li')?.textContent || ''), null, { timeout: 120_000 });
  await ask(page, 'When does the vault open?');
  await page.waitForFunction(() => document.querySelector('#answer-meta').textContent.length > 0, null, { timeout: 60_000 });
  assert.match(await page.textContent('#answer'), /nine in the morning/);
  assert.equal(prompts.length, 1, 'asked for the key once');
  await shot(page, '20-keys');
  assertOnlySelf(page, base);
  await page.close();
});
