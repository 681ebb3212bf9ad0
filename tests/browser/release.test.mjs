// The release dialog: with a relay server configured (MP_SMTP_RELAY_*), the
// open message has a Release button; the dialog is filled with the message's
// recipients, sends it on through the relay server, and shows the server's
// refusal without losing anything. Runs two servers of its own (MAILSAFE_BIN):
// a catcher with a relay, and a second catcher as the relay server, whose
// API shows what arrived.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  BIN, launch, messagesOf, sendMailVia, shot, startServe, stopServe,
} from './lib.mjs';

let dir;
let browser;
const servers = [];
before(async () => {
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-release-'));
  browser = await launch();
});
after(async () => {
  await browser?.close();
  for (const s of servers) await stopServe(s);
  rmSync(dir, { recursive: true, force: true });
});

/** Starts a catcher; returns its base URL and SMTP port. */
async function start(name, env) {
  const server = await startServe(dir, name, env);
  servers.push(server.child);
  return server;
}

test('release a message from the UI through the relay server', { skip: !BIN && 'MAILSAFE_BIN not set' }, async () => {
  const relay = await start('relay-server', {});
  const catcher = await start('catcher', {
    MP_SMTP_RELAY_HOST: '127.0.0.1',
    MP_SMTP_RELAY_PORT: String(relay.smtp),
    MP_SMTP_RELAY_BLOCKED_RECIPIENTS: '@blocked\\.test$',
  });
  // Without a relay server there is no Release button.
  const plain = await browser.newPage();
  await sendMailVia(relay.smtp, { subject: 'no relay here' });
  await plain.goto(relay.base + '/');
  await plain.locator('#messages li', { hasText: 'no relay here' }).click();
  await plain.waitForSelector('#msg-subject:text("no relay here")');
  assert.equal(await plain.locator('#msg-release').isVisible(), false);
  await plain.close();

  await sendMailVia(catcher.smtp, {
    subject: 'Release me',
    to: 'Team <team@example.test>',
    headers: { Cc: 'cc@example.test' },
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(catcher.base + '/');
  await page.locator('#messages li', { hasText: 'Release me' }).click();
  await page.waitForSelector('#msg-subject:text("Release me")');
  await page.locator('#msg-release').click();
  await page.waitForSelector('#release[open]');
  // Filled with the message's recipients; the relay server named.
  assert.equal(await page.inputValue('#release-to'), 'team@example.test, cc@example.test');
  assert.equal(await page.locator('#release-server').innerText(), `127.0.0.1:${relay.smtp}`);
  assert.match(await page.locator('#release-rules').innerText(), /blocked\\\.test/);

  // A blocked recipient: the server's refusal in the dialog, which stays open.
  await page.fill('#release-to', 'x@blocked.test');
  await page.click('#release-send');
  await page.waitForSelector('#release-error:not([hidden])', { timeout: 15000 });
  assert.match(await page.locator('#release-error').innerText(), /blocklist/);
  assert.ok(await page.locator('#release[open]').count(), 'the dialog stays open');
  await shot(page, 'release-refused');

  // Corrected: released, the dialog closes, a toast says so.
  await page.fill('#release-to', 'dest@ok.test, second@ok.test');
  await page.click('#release-send');
  await page.waitForFunction(() => !document.getElementById('release').open, null, { timeout: 15000 });
  await page.waitForSelector('#toast:text("Released to 2 recipients")');
  const until = Date.now() + 15000;
  let got;
  while (!(got = (await messagesOf(relay.base)).find((m) => m.Subject === 'Release me'))) {
    assert.ok(Date.now() < until, 'the released message reaches the relay server');
    await new Promise((r) => setTimeout(r, 100));
  }
  // The envelope recipients (not in the headers) are recorded as Bcc.
  assert.deepEqual(got.Bcc.map((a) => a.Address).sort(), ['dest@ok.test', 'second@ok.test']);
  // The original stays in the catcher.
  assert.equal((await messagesOf(catcher.base)).length, 1);
});
