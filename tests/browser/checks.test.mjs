// The message view's source and check tabs, against catchers of this file's
// own (MAILSAFE_BIN): HTML Source (the HTML as sent, as text), Link Check
// (run on request against an HTTP server on 127.0.0.1, with
// MP_ALLOW_INTERNAL_HTTP_REQUESTS; the follow option kept), no Spam
// Analysis without spamd (spam.test.mjs has it with one) and HTML Check
// (shown only when the server's check answers; Mailpit's HTMLCheckResponse
// rendered with the clients each warning affects).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import {
  BIN, eventually, launch, openMessage, shot, startServe, stopServe,
} from './lib.mjs';

let dir;
let browser;
let catcher; // MP_ALLOW_INTERNAL_HTTP_REQUESTS, no spamd
const servers = [];
before(async () => {
  if (!BIN) return;
  dir = mkdtempSync(path.join(tmpdir(), 'mailsafe-checks-'));
  browser = await launch();
  catcher = await startServe(dir, 'checks', { MP_ALLOW_INTERNAL_HTTP_REQUESTS: '1' });
  servers.push(catcher.child);
});
after(async () => {
  await browser?.close();
  for (const s of servers) await stopServe(s);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const skip = !BIN && 'MAILSAFE_BIN not set';

test('HTML Source shows the HTML as sent, as text; tabs work from the keyboard', { skip }, async () => {
  const html = '<html><body><b id="bold">bold &amp; <i>more</i></b><script>window.__ran = 1</script></body></html>';
  const page = await openMessage(browser, catcher, { subject: 'Source view', html });
  try {
    // The tab order: HTML (selected), HTML Source, Text, Headers, Raw, …
    await page.focus('#tab-html');
    await page.keyboard.press('ArrowRight');
    assert.equal(await page.getAttribute('#tab-source', 'aria-selected'), 'true');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-source');
    assert.equal(await page.getAttribute('#pane', 'aria-labelledby'), 'tab-source');
    const source = await page.locator('#source-body').textContent();
    assert.equal(source.trim(), html, 'the source is the HTML as sent');
    // Text, not markup: no element of the mail made it into the page.
    assert.equal(await page.locator('#pane b, #pane script').count(), 0);
    assert.equal(await page.evaluate(() => window.__ran), undefined);
    // Mailpit shows Spam Analysis only when spamd is configured: not here.
    assert.equal(await page.locator('#tab-spam').isVisible(), false);
    await page.keyboard.press('End');
    assert.equal(await page.getAttribute('#tab-links', 'aria-selected'), 'true', 'End: the last visible tab');
    await page.keyboard.press('Home');
    assert.equal(await page.getAttribute('#tab-html', 'aria-selected'), 'true');
  } finally {
    await page.close();
  }
});

test('Link Check runs on request, shows each link\'s status, follows redirects when asked', { skip }, async () => {
  const seen = [];
  const site = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.url === '/ok') res.writeHead(200);
    else if (req.url === '/moved') res.writeHead(302, { Location: '/ok' });
    else res.writeHead(404);
    res.end();
  });
  await new Promise((r) => site.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${site.address().port}`;
  let page;
  try {
    page = await openMessage(browser, catcher, {
      subject: 'Links to check',
      html: `<html><body><a href="${url}/ok">ok</a> <a href="${url}/moved">moved</a> <img src="${url}/missing.png"></body></html>`,
    });
    await page.click('#tab-links');
    await page.waitForSelector('#link-run:text("Check message links")');
    assert.deepEqual(seen, [], 'opening the tab requests nothing');
    assert.equal(await page.isChecked('#link-follow'), false);

    await page.click('#link-run');
    await page.waitForSelector('#link-heading:text("Scanned 3 links")', { timeout: 60000 });
    const group = (code) => page.locator(`.status-group[data-status="${code}"]`);
    assert.match(await group(404).innerText(), new RegExp(`Status 404[\\s\\S]*${url}/missing\\.png`));
    assert.match(await group(302).innerText(), new RegExp(`${url}/moved`));
    assert.match(await group(200).innerText(), new RegExp(`${url}/ok`));
    // Failures first, then redirects, then the rest.
    assert.deepEqual(await page.locator('.status-group').evaluateAll((g) => g.map((x) => x.dataset.status)), ['404', '302', '200']);
    assert.equal(await page.locator('#links-score').innerText(), '1', 'one broken link on the tab');
    await shot(page, 'link-check');

    // Following redirects: the check runs again, /moved ends at /ok's 200.
    await page.check('#link-follow');
    await page.waitForSelector('#link-heading:text("Scanned 3 links")');
    await eventually(async () => (await group(302).count()) === 0, 'the redirect followed');
    assert.match(await group(200).innerText(), new RegExp(`${url}/moved`));
    // Kept across reloads (Mailpit's key).
    await page.reload();
    await page.waitForSelector('#msg-subject:text("Links to check")');
    await page.click('#tab-links');
    assert.equal(await page.isChecked('#link-follow'), true);
    assert.equal(await page.locator('#link-heading').innerText(), 'Link check', 'not run on opening by default');

    // Automatic checking (Mailpit's option): turned on, it runs at once and
    // then on every message opened.
    await page.check('#link-auto');
    await page.waitForSelector('#link-heading:text("Scanned 3 links")', { timeout: 60000 });
    seen.length = 0;
    await page.reload();
    await page.waitForSelector('#msg-subject:text("Links to check")');
    // (A request per link at least; /moved is followed to /ok too.)
    await eventually(() => seen.length >= 3, 'the links requested on opening', 60000);
    await page.click('#tab-links');
    await page.waitForSelector('#link-heading:text("Scanned 3 links")', { timeout: 60000 });
    await page.uncheck('#link-auto');
  } finally {
    await page?.close();
    site.close();
  }
});

/** A Mailpit HTMLCheckResponse (internal/htmlcheck/structs.go's shape). */
const HTML_CHECK = {
  Platforms: { windows: ['Outlook'], android: ['Gmail'], macos: ['Apple Mail'] },
  Total: { Tests: 304, Nodes: 12, Supported: 81.25, Partial: 12.5, Unsupported: 6.25 },
  Warnings: [
    {
      Slug: 'html-script', Title: '<script> element', Description: '<img src=x onerror="window.__pwn = 1">Scripts never run in mail.',
      URL: 'javascript:window.__pwn = 2', Category: 'html', Tags: [], Keywords: 'script', NotesByNumber: {}, Results: [],
      Score: { Found: 1, Supported: 0, Partial: 0, Unsupported: 100 },
    },
    {
      Slug: 'css-display-flex', Title: 'display:flex', Description: 'Flexible <b>box</b> layout.',
      URL: 'https://www.caniemail.com/features/css-display-flex/', Category: 'css', Tags: [], Keywords: 'flex',
      NotesByNumber: { 1: 'Only <code>flex</code>, not <code>inline-flex</code>.' },
      Results: [
        { Name: 'Outlook Windows 2019', Platform: 'windows', Family: 'Outlook', Version: '2019', Support: 'no', NoteNumber: '' },
        { Name: 'Gmail Android', Platform: 'android', Family: 'Gmail', Version: '2023-01', Support: 'partial', NoteNumber: '1' },
        { Name: 'Apple Mail macOS', Platform: 'macos', Family: 'Apple Mail', Version: '16', Support: 'yes', NoteNumber: '' },
      ],
      Score: { Found: 2, Supported: 33.33, Partial: 33.33, Unsupported: 33.34 },
    },
  ],
};

/** Reloads the open message: once the HTML check has answered, its tab is hidden. */
async function assertHTMLCheckHidden(page) {
  const answered = page.waitForResponse((r) => r.url().endsWith('/html-check'));
  await page.reload();
  await answered;
  await page.waitForSelector('#msg-subject:text("HTML to check")');
  assert.equal(await page.locator('#tab-htmlcheck').isVisible(), false);
}

test('HTML Check: Mailpit\'s response shape rendered; hidden when the server\'s check is not enabled', { skip }, async () => {
  const html = '<html><body><div style="display:flex">flex</div></body></html>';
  // Against the real endpoint: the tab agrees with what the server answers.
  const page = await openMessage(browser, catcher, { subject: 'HTML to check', html });
  try {
    const id = new URL(page.url()).searchParams.get('m');
    const res = await fetch(`${catcher.base}/api/v1/message/${id}/html-check`);
    if (res.ok) {
      const check = await res.json();
      await page.waitForSelector('#tab-htmlcheck:not([hidden])', { timeout: 30000 });
      await eventually(async () => (await page.locator('#htmlcheck-score').innerText()) === `${Math.floor(check.Total.Supported)}%`, 'the score on the tab');
      await page.click('#tab-htmlcheck');
      await page.waitForSelector('#html-warnings');
      assert.equal(await page.locator('details.warning').count(), check.Warnings.length);
    } else {
      assert.match(await res.text(), /not enabled/);
      await assertHTMLCheckHidden(page);
    }
  } finally {
    await page.close();
  }

  // Rendering, with Mailpit's documented shape served for the request.
  const fixture = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  try {
    fixture.on('pageerror', (e) => console.error('page error:', e.message));
    await fixture.route('**/api/v1/message/*/html-check', (route) => route.fulfill({ json: HTML_CHECK }));
    await fixture.goto(catcher.base + '/');
    await fixture.locator('#messages li', { hasText: 'HTML to check' }).click();
    await fixture.waitForSelector('#tab-htmlcheck:not([hidden])');
    assert.equal(await fixture.locator('#htmlcheck-score').innerText(), '81%');
    assert.match(await fixture.getAttribute('#htmlcheck-score', 'class'), /\bwarn\b/);
    await fixture.click('#tab-htmlcheck');
    assert.equal(await fixture.locator('#html-total').innerText(), '81.25% supported');
    assert.equal(await fixture.locator('#html-warnings').innerText(), '2 warnings');
    // Ordered as Mailpit's UI orders them, by partial + unsupported share
    // weighted by occurrences among the nodes: display:flex (67% x 2/12)
    // before one <script> (100% x 1/12).
    assert.deepEqual(await fixture.locator('details.warning').evaluateAll((d) => d.map((x) => x.dataset.slug)), ['css-display-flex', 'html-script']);
    const flex = fixture.locator('details.warning[data-slug="css-display-flex"]');
    await flex.locator('summary').click();
    const clients = await flex.locator('.clients li').allInnerTexts();
    assert.deepEqual(clients, ['Outlook Windows 2019', 'Gmail Android [1]'], 'the clients affected, not those with support');
    assert.equal(await flex.locator('.clients li.no').innerText(), 'Outlook Windows 2019');
    assert.match(await flex.innerText(), /\[1\] Only flex, not inline-flex\./);
    assert.match(await flex.innerText(), /Flexible box layout\./);
    assert.equal(await flex.locator('a').getAttribute('href'), 'https://www.caniemail.com/features/css-display-flex/');
    // The data's HTML is shown as text: no element, no handler, no javascript: link.
    const script = fixture.locator('details.warning[data-slug="html-script"]');
    await script.locator('summary').click();
    assert.equal(await fixture.locator('#pane img, #pane b, #pane code').count(), 0);
    assert.equal(await script.locator('a').count(), 0);
    assert.equal(await fixture.evaluate(() => window.__pwn), undefined);
    await shot(fixture, 'html-check');

    // A server whose check is not enabled: the tab is hidden.
    await fixture.unroute('**/api/v1/message/*/html-check');
    await fixture.route('**/api/v1/message/*/html-check', (route) => route.fulfill({
      status: 400, contentType: 'text/plain', body: 'this check is not enabled on this server',
    }));
    await assertHTMLCheckHidden(fixture);
  } finally {
    await fixture.close();
  }
});
