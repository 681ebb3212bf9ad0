// Web UI benchmark: how fast mail shows up in an open page, how the page
// copes with a burst, and how fast it opens on a full mailbox. Drives Debian
// chromium (playwright-core from tests/browser) against a running catcher:
// MAILSAFE_UI_URL and MAILSAFE_SMTP_PORT (bench/ui-live.sh sets them).
// Bounded: 200 paced messages, a burst of 1000, a mailbox of 5000.
import net from 'node:net';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(path.join(here, '../tests/browser/package.json'));
const { chromium } = require('playwright-core');

const BASE = process.env.MAILSAFE_UI_URL;
const PORT = Number(process.env.MAILSAFE_SMTP_PORT);
const PACED = Number(process.env.UI_BENCH_PACED || 200);
const BURST = Number(process.env.UI_BENCH_BURST || 1000);
const FULL = Number(process.env.UI_BENCH_FULL || 5000);

/** A minimal SMTP client on one connection: resolves each send on the 250 after DATA. */
class Smtp {
  constructor(port) { this.port = port; this.buf = ''; this.waiters = []; }
  async open() {
    this.sock = net.connect(this.port, '127.0.0.1');
    this.sock.setEncoding('utf8');
    this.sock.on('data', (d) => {
      this.buf += d;
      let i;
      while ((i = this.buf.indexOf('\r\n')) >= 0) {
        const line = this.buf.slice(0, i);
        this.buf = this.buf.slice(i + 2);
        if (line[3] === '-') continue; // multi-line reply continues
        const w = this.waiters.shift();
        if (w) w(line);
      }
    });
    await this.reply();
    await this.cmd('EHLO bench.test');
  }
  reply() { return new Promise((r) => this.waiters.push(r)); }
  async cmd(line) {
    const p = this.reply();
    this.sock.write(line + '\r\n');
    const r = await p;
    if (!/^[23]/.test(r)) throw new Error(`${line} -> ${r}`);
    return r;
  }
  async send(subject) {
    await this.cmd('MAIL FROM:<bench@example.test>');
    await this.cmd('RCPT TO:<ui@example.test>');
    await this.cmd('DATA');
    const body = `From: Bench <bench@example.test>\r\nTo: <ui@example.test>\r\nSubject: ${subject}\r\n` +
      `Date: ${new Date().toUTCString()}\r\nMessage-ID: <${subject.replace(/\W/g, '')}.${Date.now()}@bench>\r\n\r\nbody of ${subject}\r\n.`;
    await this.cmd(body);
  }
  close() { this.sock.end('QUIT\r\n'); }
}

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(p * s.length))]; };
const api = async (m, p, b) => { const r = await fetch(BASE + p, { method: m, headers: { 'Content-Type': 'application/json' }, body: b && JSON.stringify(b) }); return r.headers.get('content-type')?.includes('json') ? r.json() : r.text(); };

const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const results = {};
try {
  await api('DELETE', '/api/v1/messages', {});
  const page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  await page.goto(BASE + '/');
  await page.waitForSelector('#conn.live');
  // The page records when each subject first appears in the list.
  await page.evaluate(() => {
    window.__seen = {};
    new MutationObserver(() => {
      for (const s of document.querySelectorAll('#messages li .subject')) {
        if (!(s.textContent in window.__seen)) window.__seen[s.textContent] = Date.now();
      }
    }).observe(document.getElementById('messages'), { childList: true, subtree: true });
  });

  // 1. Paced: one message every 50 ms; latency from the SMTP 250 to the row.
  const smtp = new Smtp(PORT);
  await smtp.open();
  const sent = {};
  for (let i = 0; i < PACED; i++) {
    const s = `paced-${i}`;
    await smtp.send(s);
    sent[s] = Date.now();
    await new Promise((r) => setTimeout(r, 50));
  }
  await page.waitForFunction((n) => Object.keys(window.__seen).filter((k) => k.startsWith('paced-')).length >= n, PACED, { timeout: 30000 }).catch(() => {});
  const seen = await page.evaluate(() => window.__seen);
  const lat = Object.keys(sent).filter((s) => seen[s]).map((s) => seen[s] - sent[s]);
  results.paced = { sent: PACED, shown: lat.length, p50_ms: pct(lat, 0.5), p95_ms: pct(lat, 0.95), max_ms: Math.max(...lat) };

  // 2. Burst: as fast as one SMTP connection goes; time until the newest is on
  // screen and the title counts them all.
  await api('DELETE', '/api/v1/messages', {});
  await page.waitForFunction(() => document.title === 'mailsafe', null, { timeout: 10000 });
  const t0 = Date.now();
  for (let i = 0; i < BURST; i++) await smtp.send(`burst-${i}`);
  const tSent = Date.now();
  await page.waitForFunction((n) => document.title.startsWith(`(${n})`) && document.querySelector('#messages li .subject')?.textContent === `burst-${n - 1}`, BURST, { timeout: 60000 });
  const tShown = Date.now();
  results.burst = { messages: BURST, smtp_s: (tSent - t0) / 1000, msgs_per_s: Math.round(BURST / ((tSent - t0) / 1000)), shown_after_last_ms: tShown - tSent };

  // 3. Full mailbox: open the page cold with FULL messages stored.
  for (let i = BURST; i < FULL; i++) await smtp.send(`fill-${i}`);
  smtp.close();
  const fresh = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  const l0 = Date.now();
  await fresh.goto(BASE + '/');
  await fresh.waitForSelector('#messages li');
  const loadMs = Date.now() - l0;
  const target = `fill-${Math.floor((BURST + FULL) / 2)}`;
  const s0 = Date.now();
  await fresh.fill('#q', target);
  await fresh.press('#q', 'Enter');
  await fresh.waitForFunction((t) => document.querySelectorAll('#messages li').length === 1 && document.querySelector('#messages li .subject').textContent === t, target, { timeout: 20000 });
  const searchMs = Date.now() - s0;
  const o0 = Date.now();
  await fresh.click('#messages li');
  await fresh.waitForSelector(`#msg-subject:text("${target}")`);
  results.full = { messages: FULL, first_rows_ms: loadMs, search_ms: searchMs, open_message_ms: Date.now() - o0 };
} finally {
  await browser.close();
}
console.log(JSON.stringify(results, null, 2));
