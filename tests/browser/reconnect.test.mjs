// Live updates survive a server restart: the page notices the websocket
// dropped, reconnects by itself when the server is back, and catches up.
// Runs its own `mailsafe serve` (MAILSAFE_BIN, set by run.sh) so it can stop
// and restart it without disturbing the other tests.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launch, sendMailVia, shot } from './lib.mjs';

const BIN = process.env.MAILSAFE_BIN;

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

async function waitHttp(url, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try { const r = await fetch(url); if (r.ok) return; } catch (e) { /* not up yet */ }
    if (Date.now() > until) throw new Error(`${url} did not answer`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

let dir;
let browser;
before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-reconnect-'));
  browser = await launch();
});
after(async () => {
  await browser?.close();
  rmSync(dir, { recursive: true, force: true });
});

function serve(httpPort, smtpPort) {
  const child = spawn(BIN, [
    'serve', '--db', path.join(dir, 'mail.db'),
    '--smtp', `127.0.0.1:${smtpPort}`, '--listen', `127.0.0.1:${httpPort}`,
  ], { stdio: ['ignore', 'ignore', 'inherit'] });
  return child;
}

async function stop(child) {
  if (child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 10000);
  await exited;
  clearTimeout(t);
}

test('the page reconnects to a restarted server and shows mail sent after', { skip: !BIN && 'MAILSAFE_BIN not set' }, async () => {
  const httpPort = await freePort();
  const smtpPort = await freePort();
  const base = `http://127.0.0.1:${httpPort}`;
  let server = serve(httpPort, smtpPort);
  try {
    await waitHttp(`${base}/api/v1/messages`);
    const page = await browser.newPage();
    await page.goto(base + '/');
    await page.waitForSelector('#conn.live');
    await page.evaluate(() => { window.__sameDocument = true; });

    await stop(server);
    await page.waitForSelector('#conn:not(.live)', { timeout: 15000 });

    server = serve(httpPort, smtpPort);
    await waitHttp(`${base}/api/v1/messages`);
    // Backoff tops out at 5 s; allow a little more.
    await page.waitForSelector('#conn.live', { timeout: 20000 });

    await sendMailVia(smtpPort, { subject: 'After restart' });
    await page.locator('#messages li', { hasText: 'After restart' }).waitFor({ timeout: 15000 });
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'page was reloaded');
    await shot(page, 'reconnected');
  } finally {
    await stop(server);
  }
});
