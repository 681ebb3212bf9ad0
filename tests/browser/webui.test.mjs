// Server options that reach the UI, on a catcher of this file's own
// (MAILSAFE_BIN) beside the one run.sh started (defaults): /api/v1/webui
// reports ChaosEnabled, DuplicatesIgnored and HideDeleteAllButton from the
// real options, the UI hides "Delete all", and MP_BLOCK_REMOTE_CSS_AND_FONTS
// keeps remote stylesheets and fonts out of the preview even after the user
// loads remote content (which still loads remote images); with chaos on,
// Settings sets its triggers (and SMTP then answers with them).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  BASE, BIN, RED_PNG_B64, api, clearMailbox, eventually, launch, messagesOf, sendMail, sendMailVia, shot, startServe, stopServe,
} from './lib.mjs';

let dir;
let browser;
let strict; // the catcher with the options set
before(async () => {
  if (!BIN) return;
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-webui-'));
  browser = await launch();
  strict = await startServe(dir, 'webui', {
    MP_ENABLE_CHAOS: '1',
    MP_IGNORE_DUPLICATE_IDS: '1',
    MP_HIDE_DELETE_ALL_BUTTON: '1',
    MP_BLOCK_REMOTE_CSS_AND_FONTS: '1',
  });
});
after(async () => {
  await browser?.close();
  await stopServe(strict?.child);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const skip = !BIN && 'MAILSAFE_BIN not set';

test('/api/v1/webui reports the options; the UI hides Delete all', { skip }, async () => {
  const on = await (await fetch(`${strict.base}/api/v1/webui`)).json();
  assert.equal(on.ChaosEnabled, true);
  assert.equal(on.DuplicatesIgnored, true);
  assert.equal(on.HideDeleteAllButton, true);
  const off = await api('GET', '/api/v1/webui');
  assert.deepEqual([off.ChaosEnabled, off.DuplicatesIgnored, off.HideDeleteAllButton], [false, false, false]);

  const page = await browser.newPage();
  try {
    await sendMailVia(strict.smtp, { subject: 'Keep me' });
    await page.goto(strict.base + '/');
    await page.locator('#messages li', { hasText: 'Keep me' }).waitFor();
    // Hidden once the settings have arrived (they load beside the list).
    await eventually(async () => !(await page.locator('#btn-delete-all').isVisible()), 'Delete all hidden');
    await clearMailbox();
    await sendMail({ subject: 'Default server' });
    const settings = page.waitForResponse((r) => r.url().endsWith('/api/v1/webui'));
    await page.goto(BASE + '/');
    await settings;
    await page.locator('#messages li', { hasText: 'Default server' }).waitFor();
    assert.equal(await page.locator('#btn-delete-all').isVisible(), true, 'shown by default');
  } finally {
    await page.close();
  }
});

test('MP_BLOCK_REMOTE_CSS_AND_FONTS: remote images load on request, stylesheets and fonts never', { skip }, async () => {
  const hits = [];
  const remote = http.createServer((req, res) => {
    hits.push(req.url);
    if (req.url.startsWith('/img')) {
      res.writeHead(200, { 'Content-Type': 'image/png' });
      res.end(Buffer.from(RED_PNG_B64, 'base64'));
    } else if (req.url.startsWith('/css')) {
      res.writeHead(200, { 'Content-Type': 'text/css' });
      res.end('#p { color: rgb(255, 0, 0) }');
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => remote.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${remote.address().port}`;
  const html = `<html><head><link rel="stylesheet" href="${url}/css">
    <style>@font-face{font-family:x;src:url('${url}/font')} #p{font-family:x}</style></head>
    <body><p id="p">styled</p><img id="img" src="${url}/img"></body></html>`;

  /** Opens the message on `server`, loads remote content, and waits for the image. */
  async function open(server, subject) {
    await sendMailVia(server.smtp, { subject, html });
    const page = await browser.newPage();
    const refused = [];
    page.on('console', (m) => { if (/^Loading the (stylesheet|font) .* violates/.test(m.text())) refused.push(m.text()); });
    const res = await page.goto(server.base + '/');
    await page.locator('#messages li', { hasText: subject }).click();
    await page.frameLocator('#preview').locator('#p').waitFor();
    await page.check('#remote');
    await eventually(() => hits.some((h) => h.startsWith('/img')), 'the remote image requested');
    return { page, refused, csp: res.headers()['content-security-policy'], label: await page.locator('#remote-toggle').innerText() };
  }

  try {
    // Default server: after opting in, the remote stylesheet loads too.
    await clearMailbox();
    const plain = await open({ base: BASE, smtp: process.env.MAILSAFE_SMTP_PORT }, 'Remote styles, allowed');
    await eventually(() => hits.some((h) => h.startsWith('/css')), 'the remote stylesheet requested (default)');
    assert.match(plain.label, /Load remote content/);
    await plain.page.close();

    hits.length = 0;
    const blocked = await open(strict, 'Remote styles, blocked');
    try {
      assert.match(blocked.csp, /style-src 'self' 'unsafe-inline';/);
      assert.match(blocked.csp, /font-src 'self' data:;/);
      assert.match(blocked.label, /Load remote images/);
      // The browser reports both refused by the page's own policy (the
      // server's, which the preview inherits); the server never saw either.
      await eventually(() => blocked.refused.some((t) => /stylesheet .*"style-src 'self' 'unsafe-inline'"/.test(t)), 'the stylesheet refused by the page policy');
      await eventually(() => blocked.refused.some((t) => /font .*"font-src 'self' data:"/.test(t)), 'the font refused by the page policy');
      assert.deepEqual(hits.filter((h) => !h.startsWith('/img')), [], `requests: ${hits.join(' ')}`);
      const color = await blocked.page.frameLocator('#preview').locator('#p').evaluate((e) => getComputedStyle(e).color);
      assert.notEqual(color, 'rgb(255, 0, 0)', 'the remote stylesheet applied');
    } finally {
      await blocked.page.close();
    }
  } finally {
    remote.close();
  }
});

test('chaos triggers set from Settings when chaos is on', { skip }, async () => {
  const page = await browser.newPage();
  try {
    // Not offered by a server without chaos.
    await page.goto(BASE + '/');
    await page.waitForSelector('#conn.live');
    await page.click('#settings-btn');
    assert.equal(await page.locator('#chaos').isVisible(), false);

    const settings = page.waitForResponse((r) => r.url().endsWith('/api/v1/webui'));
    await page.goto(strict.base + '/');
    await settings;
    await page.click('#settings-btn');
    await page.waitForSelector('#chaos:not([hidden])');
    const now = await (await fetch(`${strict.base}/api/v1/chaos`)).json();
    await eventually(async () => (await page.inputValue('#chaos-Recipient-code')) === String(now.Recipient.ErrorCode), 'the triggers loaded');

    // Every recipient refused with 452: SMTP says so.
    await page.fill('#chaos-Recipient-code', '452');
    await page.fill('#chaos-Recipient-prob', '100');
    await page.click('#chaos-save');
    await page.waitForSelector('#chaos-note:text("Updated")');
    await shot(page, 'settings-chaos');
    const set = await (await fetch(`${strict.base}/api/v1/chaos`)).json();
    assert.deepEqual(set.Recipient, { ErrorCode: 452, Probability: 100 });
    await assert.rejects(sendMailVia(strict.smtp, { subject: 'Refused by chaos' }), /452/);

    // A code the server refuses: its answer shown, nothing changed.
    await page.fill('#chaos-Recipient-code', '200');
    await page.press('#chaos-Recipient-code', 'Enter');
    await eventually(async () => /\S/.test(await page.locator('#chaos-note').innerText()) &&
      (await page.locator('#chaos-note').innerText()) !== 'Updated', 'the refusal shown');
    assert.equal(await page.locator('#settings').evaluate((d) => d.open), true, 'Enter kept the dialog open');
    assert.deepEqual((await (await fetch(`${strict.base}/api/v1/chaos`)).json()).Recipient, { ErrorCode: 452, Probability: 100 });

    // Off again: mail goes through.
    await page.fill('#chaos-Recipient-code', '451');
    await page.fill('#chaos-Recipient-prob', '0');
    await page.click('#chaos-save');
    await page.waitForSelector('#chaos-note:text("Updated")');
    await sendMailVia(strict.smtp, { subject: 'After chaos' });
    await eventually(async () => (await messagesOf(strict.base)).some((m) => m.Subject === 'After chaos'), 'mail accepted again');
  } finally {
    await page.close();
  }
});
