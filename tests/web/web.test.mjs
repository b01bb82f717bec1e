// The web page in a real browser: Debian's chromium driven by playwright-core, against a real
// kb server on a random loopback port. Screenshots go to test-artifacts/screenshots/.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const root = resolve(import.meta.dirname, '../..');
const bin = process.env.KB_BIN;
const fixtures = process.env.KB_TEST_FIXTURES || join(root, 'test-artifacts/fixtures');
const shots = join(root, 'test-artifacts/screenshots');
mkdirSync(shots, { recursive: true });

let server, base, browser, page, tmp;

function startServer() {
  tmp = mkdtempSync(join(tmpdir(), 'kb-web-'));
  server = spawn(bin, ['serve', '--addr', '127.0.0.1:0', '--data-dir', join(tmp, 'data')], {
    // kb reads every KB_* variable as configuration: pass only the ones meant for it.
    env: {
      ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KB_') || k === 'KB_MODELS_DIR')),
      KB_LOG: process.env.KB_LOG || 'warn',
    },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
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

const shot = (name) => page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });

before(async () => {
  assert.ok(bin, 'KB_BIN must point at the kb binary');
  base = await startServer();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1100, height: 900 } });
  page.on('dialog', (d) => d.accept());
});

after(async () => {
  await browser?.close();
  server?.kill('SIGKILL');
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

test('upload, watch indexing, ask, follow a citation, delete', async () => {
  const requests = [];
  page.on('request', (r) => requests.push(r.url()));
  await page.goto(base + '/');
  await page.fill('#collection', 'web');
  await page.press('#collection', 'Enter');

  // Upload a PDF and an HTML page; both reach "ready" through the job event streams.
  await page.setInputFiles('#file-input', [join(fixtures, 'bashref-3pages.pdf'), join(fixtures, 'gzip.html')]);
  await page.waitForFunction(() => {
    const items = [...document.querySelectorAll('#upload-list li')];
    return items.length === 2 && items.every((li) => /ready/.test(li.textContent));
  }, null, { timeout: 240_000 });
  await shot('1-uploaded');
  await page.waitForFunction(() => document.querySelectorAll('#docs-table tbody tr').length === 2, null, { timeout: 30_000 });
  const table = await page.textContent('#docs-table');
  assert.match(table, /bashref-3pages\.pdf/);
  assert.match(table, /gzip\.html/);
  assert.match(table, /ready/);

  // Ask; the answer and its sources appear.
  await page.fill('#question', 'What is the Bash escape character?');
  await page.press('#question', 'Enter');
  await page.waitForFunction(() => document.querySelector('#answer-meta').textContent.length > 0, null, { timeout: 60_000 });
  await shot('2-answered');
  const answer = await page.textContent('#answer');
  assert.match(answer.toLowerCase(), /backslash/);
  const nSources = await page.locator('#sources li.source').count();
  assert.ok(nSources >= 1, 'sources listed');
  assert.match(await page.textContent('#sources'), /bashref-3pages\.pdf/);

  // Clicking a citation highlights its source.
  const cite = page.locator('#answer .cite').first();
  const n = await cite.getAttribute('data-n');
  await cite.click();
  await page.waitForSelector(`#source-${n}.highlight`);
  await shot('3-citation');

  // Delete the HTML document.
  const row = page.locator('#docs-table tbody tr', { hasText: 'gzip.html' });
  await row.locator('button.delete').click();
  await page.waitForFunction(() => !document.querySelector('#docs-table').textContent.includes('gzip.html'), null, { timeout: 30_000 });
  await shot('4-deleted');
  const res = await fetch(`${base}/v1/collections/web/documents`).then((r) => r.json());
  assert.deepEqual(res.documents.map((d) => d.name), ['bashref-3pages.pdf']);

  // Nothing was fetched from anywhere but the server itself.
  for (const u of requests) assert.ok(u.startsWith(base) || u.startsWith('data:'), `unexpected request ${u}`);
});
