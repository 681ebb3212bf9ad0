// The Spam Analysis tab against a real Debian spamd (installed by
// scripts/setup.sh) started by this file on 127.0.0.1, and a catcher of its
// own with MP_ENABLE_SPAMASSASSIN pointing at it: the check runs when a
// message opens, as Mailpit's, its score on the tab, score and rules in it.
// (checks.test.mjs checks the tab is absent without spamd.) A file of its
// own: spamd compiles its rules before it answers, which takes much of the
// file's time budget (run.sh's --test-timeout) on a loaded machine.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  BIN, eventually, freePort, launch, openMessage, shot, startServe, stopServe,
} from './lib.mjs';

let dir;
let browser;
const servers = [];
before(async () => {
  if (!BIN) return;
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-spam-'));
  browser = await launch();
});
after(async () => {
  await browser?.close();
  for (const s of servers) await stopServe(s);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Whether spamd on 127.0.0.1:`port` answers PING. */
function spamdPing(port) {
  return new Promise((resolve) => {
    let answer = '';
    const s = net.connect(port, '127.0.0.1', () => s.end('PING SPAMC/1.5\r\n\r\n'));
    s.setTimeout(5000, () => s.destroy());
    s.on('data', (d) => { answer += d; });
    s.on('error', () => {});
    s.on('close', () => resolve(answer.includes('PONG')));
  });
}

/**
 * Starts Debian's spamd on a free loopback port, as
 * crates/catcher/tests/spam_check.rs does, and waits (at most 180 s: it
 * compiles its rules first, slow on a loaded machine) until it answers.
 */
async function startSpamd() {
  const port = await freePort();
  const bin = ['/usr/sbin/spamd', '/usr/bin/spamd'].find((p) => existsSync(p)) || 'spamd';
  const child = spawn(bin, [
    `--listen=127.0.0.1:${port}`, '--allowed-ips=127.0.0.1', '--min-children=1', '--max-children=1',
    '--nouser-config', '--syslog=stderr', '--username=nobody',
    `--pidfile=${path.join(dir, 'spamd.pid')}`, `--helper-home-dir=${dir}`,
  ], { stdio: 'ignore' });
  servers.push(child);
  const until = Date.now() + 180000;
  while (!(await spamdPing(port))) {
    assert.equal(child.exitCode, null, 'spamd exited at start (scripts/setup.sh installs it)');
    assert.ok(Date.now() < until, 'spamd did not answer PING within 180 s');
    await new Promise((r) => setTimeout(r, 200));
  }
  return `127.0.0.1:${port}`;
}

/** GTUBE: SpamAssassin scores it 1000. */
const GTUBE = 'XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X';

test('Spam Analysis: score and rules from a real spamd', { skip: !BIN && 'MAILSAFE_BIN not set' }, async () => {
  const spamd = await startSpamd();
  const server = await startServe(dir, 'spam', { MP_ENABLE_SPAMASSASSIN: spamd });
  servers.push(server.child);
  const page = await openMessage(browser, server, { subject: 'Buy now', text: `Cheap offer\n${GTUBE}\n` });
  try {
    // Run on opening, as Mailpit's: the score shows on the tab.
    await page.waitForSelector('#tab-spam:not([hidden])');
    const score = page.locator('#spam-score');
    await eventually(async () => (await score.innerText()) !== '', 'the spam score on the tab', 60000);
    assert.ok(Number(await score.innerText()) >= 1000, `score ${await score.innerText()}`);
    assert.match(await score.getAttribute('class'), /\bbad\b/);
    await page.click('#tab-spam');
    assert.equal(await page.locator('#spam-verdict').innerText(), 'Spam');
    assert.match(await page.locator('#spam-total').innerText(), /^\d+(\.\d+)? \/ 5$/);
    assert.match(await page.locator('#spam-rules').innerText(), /GTUBE/);
    await shot(page, 'spam-check');
  } finally {
    await page.close();
  }
});
