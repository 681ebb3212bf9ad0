// Shared helpers of the browser tests: the server under test (started by
// run.sh, addresses in the environment), servers a test runs itself
// (MAILSAFE_BIN), a headless Debian Chromium, mail sent over real SMTP, and
// screenshots written to artifacts/.
import { execFile, spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));

/** Base URL of the catcher's HTTP server, e.g. http://127.0.0.1:41234 */
export const BASE = process.env.MAILSAFE_UI_URL;
/** Its SMTP port on 127.0.0.1. */
export const SMTP_PORT = process.env.MAILSAFE_SMTP_PORT;
if (!BASE || !SMTP_PORT) {
  throw new Error('MAILSAFE_UI_URL and MAILSAFE_SMTP_PORT must be set (tests/browser/run.sh does)');
}

export const ARTIFACTS = path.join(here, 'artifacts');
mkdirSync(ARTIFACTS, { recursive: true });

/**
 * Launches Debian's chromium headless. Never downloads a browser. Each launch
 * gets a fresh profile: playwright creates a new temporary --user-data-dir
 * for every launch() and deletes it on close.
 */
export function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
    timeout: 30000,
  });
}

/** Sends messages to the server under test over SMTP (one session). */
export function sendMail(...messages) {
  return sendMailVia(SMTP_PORT, ...messages);
}

/** Sends messages to 127.0.0.1:`port` over SMTP with Python's smtplib. */
export function sendMailVia(port, ...messages) {
  const spec = JSON.stringify({ port, messages });
  return new Promise((resolve, reject) => {
    const child = execFile('python3', [path.join(here, 'send_mail.py')], { timeout: 20000 }, (err, _out, stderr) => {
      if (err) reject(new Error(`send_mail.py failed: ${err.message}\n${stderr}`));
      else resolve();
    });
    child.stdin.end(spec);
  });
}

/** Calls the catcher's API directly (setup and cross-checks). */
export async function api(method, p, body) {
  const res = await fetch(BASE + p, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${await res.text()}`);
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : res.text();
}

/** Empties the mailbox so each test starts from a known state. */
export async function clearMailbox() {
  await api('DELETE', '/api/v1/messages', {});
  const d = await api('GET', '/api/v1/messages');
  if (d.total !== 0) throw new Error(`mailbox not empty after delete: ${d.total}`);
}

/** Waits until the API lists `n` messages (mail is stored asynchronously to the test). */
export async function waitForCount(n, timeoutMs = 10000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const d = await api('GET', '/api/v1/messages');
    if (d.total === n) return d;
    if (Date.now() > until) throw new Error(`expected ${n} messages, API has ${d.total}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Waits until `fn()` (sync or async) returns a truthy value, polling every
 * 50 ms, and returns it; throws naming `what` after `timeoutMs`.
 */
export async function eventually(fn, what, timeoutMs = 15000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Saves a full-page screenshot as artifacts/NAME.png. */
export async function shot(page, name) {
  const file = path.join(ARTIFACTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  return file;
}

/** A 16x16 red PNG, for inline-image tests. */
export const RED_PNG_B64 =
  'iVBORw0KGgoAAAANSUhEUgAAABAAAAAQCAIAAACQkWg2AAAAF0lEQVR4nGP4z8BAEiJN9aiGUQ1DSgMAkPn/Afnh+ngAAAAASUVORK5CYII=';

/** The `mailsafe` binary run.sh built, for tests that run their own servers. */
export const BIN = process.env.MAILSAFE_BIN;

/** A free TCP port on 127.0.0.1, chosen by the kernel. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

/** Waits (bounded) until `url` answers 2xx. */
export async function waitHttp(url, timeoutMs = 20000) {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try { const r = await fetch(url); if (r.ok) return; } catch (e) { /* not up yet */ }
    if (Date.now() > until) throw new Error(`${url} did not answer`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Starts `mailsafe serve` with database `db` on the given loopback ports and
 * extra environment (e.g. MP_* options); its log goes to the test's stderr.
 */
export function spawnServe(db, httpPort, smtpPort, env = {}) {
  return spawn(BIN, [
    'serve', '--db', db, '--smtp', `127.0.0.1:${smtpPort}`, '--listen', `127.0.0.1:${httpPort}`,
  ], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, ...env } });
}

/**
 * Starts a catcher of the test's own (database `name`.db in `dir`, free
 * loopback ports, extra environment `env`) and waits until it answers.
 * Returns its base URL, SMTP port and process (for stopServe).
 */
export async function startServe(dir, name, env = {}) {
  const [http, smtp] = [await freePort(), await freePort()];
  const child = spawnServe(path.join(dir, `${name}.db`), http, smtp, env);
  const base = `http://127.0.0.1:${http}`;
  try {
    await waitHttp(`${base}/api/v1/messages`);
  } catch (e) {
    await stopServe(child);
    throw e;
  }
  return { base, smtp, child };
}

/** The messages of the catcher at `base`, newest first. */
export async function messagesOf(base) {
  return (await (await fetch(`${base}/api/v1/messages`)).json()).messages;
}

/**
 * Sends one message (a send_mail.py spec) to `server` (from startServe),
 * waits until it is stored, and opens it in a new page of `browser`.
 */
export async function openMessage(browser, server, spec) {
  await sendMailVia(server.smtp, spec);
  await eventually(async () => (await messagesOf(server.base)).some((m) => m.Subject === spec.subject), `"${spec.subject}" stored`);
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('pageerror', (e) => console.error('page error:', e.message));
  await page.goto(server.base + '/');
  await page.locator('#messages li', { hasText: spec.subject }).click();
  await page.waitForSelector(`#msg-subject:text("${spec.subject}")`);
  return page;
}

/** Stops a server from spawnServe: SIGTERM, SIGKILL after 10 s. */
export async function stopServe(child) {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGTERM');
  const t = setTimeout(() => child.kill('SIGKILL'), 10000);
  await exited;
  clearTimeout(t);
}
