// Live updates survive a server restart: the page notices the websocket
// dropped, reconnects by itself when the server is back, and catches up.
// Runs its own `mailsafe serve` (MAILSAFE_BIN, set by run.sh) so it can stop
// and restart it without disturbing the other tests.
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
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-reconnect-'));
  browser = await launch();
});
after(async () => {
  await browser?.close();
  rmSync(dir, { recursive: true, force: true });
});

const serve = (httpPort, smtpPort) => spawnServe(path.join(dir, 'mail.db'), httpPort, smtpPort);
const stop = stopServe;

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
