// The web UI under MP_WEBROOT=/mail/ (a shared ingress path): its own
// `mailsafe serve` (MAILSAFE_BIN, set by run.sh). The bare prefix redirects,
// the page loads its assets, talks to the API and the websocket under the
// prefix, keeps its URLs there, and downloads from there.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  BIN, freePort, launch, sendMailVia, shot, spawnServe, stopServe, waitHttp,
} from './lib.mjs';

let dir;
let browser;
before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-webroot-'));
  browser = await launch();
});
after(async () => {
  await browser?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('the UI works under a webroot', { skip: !BIN && 'MAILSAFE_BIN not set' }, async () => {
  const httpPort = await freePort();
  const smtpPort = await freePort();
  const base = `http://127.0.0.1:${httpPort}`;
  const server = spawnServe(path.join(dir, 'mail.db'), httpPort, smtpPort, { MP_WEBROOT: 'mail' });
  try {
    await waitHttp(`${base}/mail/api/v1/messages`);
    const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    const failed = [];
    page.on('response', (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
    page.on('pageerror', (e) => failed.push(`page error: ${e.message}`));

    await page.goto(`${base}/mail`);
    assert.equal(new URL(page.url()).pathname, '/mail/', 'the bare prefix redirects');
    // Live: the websocket under the prefix connected.
    await page.waitForSelector('#conn.live');

    await sendMailVia(smtpPort, {
      subject: 'Under the webroot',
      text: 'webroot body\n',
      attachments: [{ filename: 'note.txt', content_type: 'text/plain', data: 'webroot attachment\n' }],
    });
    const row = page.locator('#messages li', { hasText: 'Under the webroot' });
    await row.waitFor({ timeout: 15000 });
    await row.click();
    await page.waitForURL(/\/mail\/\?m=/);
    await page.waitForSelector('#msg-subject:text("Under the webroot")');
    await page.click('#tab-text');
    assert.match(await page.locator('#text-body').innerText(), /webroot body/);

    const raw = await page.locator('#msg-download').getAttribute('href');
    assert.match(raw, /^\/mail\/api\/v1\/message\/[A-Za-z0-9]+\/raw$/);
    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.click('#msg-attachments a:has-text("note.txt")'),
    ]);
    let body = '';
    for await (const chunk of await download.createReadStream()) body += chunk;
    assert.equal(body, 'webroot attachment\n');

    // Back to the inbox keeps the prefix.
    await page.click('#home');
    await page.waitForURL((u) => u.pathname === '/mail/' && !u.search.includes('m='));
    await shot(page, 'webroot-inbox');
    assert.deepEqual(failed, [], 'no request failed under the webroot');
  } finally {
    await stopServe(server);
  }
});
