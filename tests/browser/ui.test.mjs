// The web UI in a real browser against a real `mailsafe serve`: mail sent
// over SMTP shows up live, opens, renders safely, and can be searched,
// tagged, marked and deleted from the page.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, beforeEach, describe, test } from 'node:test';
import {
  BASE, RED_PNG_B64, api, clearMailbox, launch, sendMail, shot, waitForCount,
} from './lib.mjs';

let browser;
let page;

before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });

beforeEach(async () => {
  await clearMailbox();
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.on('pageerror', (e) => console.error('page error:', e.message));
});

/** The rows of the message list, as the user sees them. */
const rows = () => page.locator('#messages li');
const row = (subject) => page.locator('#messages li', { hasText: subject });

describe('mailbox', () => {
  // Live, not fast: the UI has no polling, so a row that appears without a
  // reload came through the websocket. How fast is bench/ui-live.sh's figure
  // (a timed assertion here would fail on a loaded machine, not on a bug).
  test('new mail appears live, without reload', async () => {
    await page.goto(BASE + '/');
    await page.waitForSelector('#conn.live');
    // A global that a reload would wipe out.
    await page.evaluate(() => { window.__sameDocument = true; });
    assert.equal(await rows().count(), 0);
    assert.equal(await page.title(), 'mailsafe');

    await sendMail({ subject: 'Live one', text: 'first live message body' });
    const sent = Date.now();
    await row('Live one').waitFor({ timeout: 15000 });
    console.log(`live latency: ${Date.now() - sent} ms`);

    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'page was reloaded');
    await page.waitForFunction(() => document.title === '(1) mailsafe');
    const r = row('Live one');
    assert.match(await r.locator('.from').innerText(), /Sender/);
    assert.match(await r.locator('.snippet').innerText(), /first live message body/);
    assert.equal(await r.getAttribute('class').then((c) => c.includes('unread')), true);

    await sendMail({ subject: 'Live two' }, { subject: 'Live three' });
    await row('Live three').waitFor({ timeout: 15000 });
    await page.waitForFunction(() => document.title === '(3) mailsafe');
    // Newest first.
    const subjects = await page.locator('#messages li .subject').allInnerTexts();
    assert.deepEqual(subjects, ['Live three', 'Live two', 'Live one']);
    await shot(page, 'desktop-list');
  });

  test('attachment icon, pagination and the page in the URL', async () => {
    const many = [];
    for (let i = 0; i < 55; i++) many.push({ subject: `Bulk ${String(i).padStart(2, '0')}` });
    many.push({
      subject: 'With attachment',
      attachments: [{ filename: 'report.txt', content_type: 'text/plain', data: 'report contents\n' }],
    });
    await sendMail(...many);
    await waitForCount(56);
    await page.goto(BASE + '/');
    await row('With attachment').waitFor();
    assert.equal(await row('With attachment').locator('.clip').count(), 1);
    assert.equal(await row('Bulk 54').locator('.clip').count(), 0);
    assert.equal(await rows().count(), 50);
    assert.match(await page.locator('#page-info').innerText(), /1–50 of 56/);
    await page.click('#next');
    await page.waitForURL(/start=50/);
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 6);
    assert.match(await page.locator('#page-info').innerText(), /51–56 of 56/);
    await page.reload();
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 6);
    await page.goBack();
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 50);
  });

  test('select many, mark read and unread, delete, delete all', async () => {
    await sendMail({ subject: 'Keep A' }, { subject: 'Drop B' }, { subject: 'Drop C' }, { subject: 'Keep D' });
    await waitForCount(4);
    await page.goto(BASE + '/');
    await rows().nth(3).waitFor();
    await page.waitForFunction(() => document.title === '(4) mailsafe');

    await row('Drop B').locator('input.check').check();
    await row('Drop C').locator('input.check').check();
    assert.equal(await page.locator('#messages li.selected').count(), 2);

    await page.click('#btn-read');
    await page.waitForFunction(() => document.title === '(2) mailsafe');
    const afterRead = await api('GET', '/api/v1/messages');
    assert.deepEqual(
      afterRead.messages.filter((m) => m.Read).map((m) => m.Subject).sort(),
      ['Drop B', 'Drop C'],
    );
    await page.click('#btn-unread');
    await page.waitForFunction(() => document.title === '(4) mailsafe');

    await page.click('#btn-delete');
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 2);
    const left = await api('GET', '/api/v1/messages');
    assert.deepEqual(left.messages.map((m) => m.Subject).sort(), ['Keep A', 'Keep D']);

    page.once('dialog', (d) => d.accept());
    await page.click('#btn-delete-all');
    await page.waitForSelector('#empty:not([hidden])');
    assert.equal((await api('GET', '/api/v1/messages')).total, 0);
    assert.equal(await page.title(), 'mailsafe');
  });

  test('deletes made elsewhere disappear live', async () => {
    await sendMail({ subject: 'Gone soon' }, { subject: 'Stays' });
    const d = await waitForCount(2);
    await page.goto(BASE + '/');
    await row('Gone soon').waitFor();
    const id = d.messages.find((m) => m.Subject === 'Gone soon').ID;
    await api('DELETE', '/api/v1/messages', { IDs: [id] });
    await row('Gone soon').waitFor({ state: 'detached', timeout: 15000 });
    assert.equal(await rows().count(), 1);
  });
});

describe('message view', () => {
  test('HTML, text, headers, raw, attachment download, inline image', async () => {
    await sendMail({
      subject: 'Full message',
      to: 'Alice <alice@example.test>, bob@example.test',
      text: 'Plain part, see https://example.test/plain\n',
      html: '<html><body><h2 id="hello">Hello HTML</h2><p>inline:</p><img id="logo" src="cid:logo@test" alt="logo"></body></html>',
      inline: [{ cid: 'logo@test', png_b64: RED_PNG_B64, filename: 'logo.png' }],
      attachments: [{ filename: 'report.txt', content_type: 'text/plain', data: 'attached report\n' }],
      headers: { 'X-Custom-Header': 'custom-value' },
    });
    await waitForCount(1);
    await page.goto(BASE + '/');
    await row('Full message').click();
    await page.waitForURL(/\?m=/);
    await page.waitForSelector('#msg-subject:text("Full message")');
    assert.match(await page.locator('#msg-meta').innerText(), /alice@example\.test/);

    // HTML tab: rendered in the sandboxed frame, inline image loaded via cid.
    const frame = page.frameLocator('#preview');
    await frame.locator('#hello').waitFor();
    assert.equal(await frame.locator('#hello').innerText(), 'Hello HTML');
    const img = frame.locator('#logo');
    await img.waitFor();
    await page.waitForFunction(() => {
      const f = document.querySelector('#preview');
      return f && f.contentDocument === null; // opaque origin: the page cannot reach in
    });
    // naturalWidth via the frame (playwright evaluates in the frame's context).
    const width = await img.evaluate((i) => new Promise((res) => {
      if (i.complete) res(i.naturalWidth); else i.onload = () => res(i.naturalWidth);
    }));
    assert.equal(width, 16, 'inline cid image did not load');
    await shot(page, 'desktop-message-html');

    await page.click('#tab-text');
    assert.match(await page.locator('#text-body').innerText(), /Plain part/);
    assert.equal(await page.locator('#text-body a').getAttribute('href'), 'https://example.test/plain');

    await page.click('#tab-headers');
    const headers = page.locator('#headers-table');
    await headers.waitFor();
    assert.match(await headers.innerText(), /X-Custom-Header\s+custom-value/);

    await page.click('#tab-raw');
    await page.locator('#raw-body').waitFor();
    const raw = await page.locator('#raw-body').innerText();
    assert.match(raw, /Subject: Full message/);
    assert.match(raw, /MIME-Version: 1\.0/);

    // The cid: image is part of the body: only the real attachment gets a
    // chip, although the mailer marked the image "attachment" too.
    const chips = await page.locator('#msg-attachments li').allInnerTexts();
    assert.equal(chips.length, 1, `chips: ${chips.join(' | ')}`);
    assert.match(chips[0], /report\.txt/);

    const [download] = await Promise.all([
      page.waitForEvent('download'),
      page.click('#msg-attachments a:has-text("report.txt")'),
    ]);
    assert.equal(download.suggestedFilename(), 'report.txt');
    const stream = await download.createReadStream();
    let body = '';
    for await (const chunk of stream) body += chunk;
    assert.equal(body, 'attached report\n');

    // Opening marked it read.
    await page.waitForFunction(() => document.title.endsWith('mailsafe') && !document.title.includes('(1)'));
    const listed = await api('GET', '/api/v1/messages');
    assert.equal(listed.messages[0].Read, true);
  });

  test('a script in an email never runs', async () => {
    // Everything here tries to run code: in the frame, in the page, or
    // against the API (deleting all mail) if it ever got our origin.
    const evil = `<html><head>
      <meta http-equiv="refresh" content="0;url=javascript:parent.document.title='pwned-refresh'">
      <script>document.title='pwned';try{parent.document.title='pwned-parent'}catch(e){}
        try{top.__pwned=1}catch(e){}
        fetch('/api/v1/messages',{method:'DELETE',headers:{'Content-Type':'application/json'},body:'{}'});
        document.body && document.body.setAttribute('data-ran','1');</script>
      </head><body>
      <p id="visible">Evil but harmless</p>
      <img src="x-broken" onerror="fetch('/api/v1/messages',{method:'DELETE',body:'{}'});document.getElementById('visible').textContent='ran onerror'">
      <svg onload="document.getElementById('visible').textContent='ran svg'"></svg>
      <iframe srcdoc="<script>parent.parent.__pwned=2</script>"></iframe>
      <a id="jslink" href="javascript:parent.__pwned=3">click</a>
      <form action="/api/v1/messages" method="post"><button id="sub">go</button></form>
      <object data="javascript:parent.__pwned=4"></object>
      <script>document.getElementById('visible').textContent='ran inline';</script>
      </body></html>`;
    await sendMail(
      {
        subject: 'Evil <img src=x onerror="window.__xss=5"> subject',
        from: 'Evil <evil@example.test>',
        html: evil,
        attachments: [{ filename: 'evil.html', content_type: 'text/html', data: evil }],
      },
      { subject: 'Bystander' },
    );
    await waitForCount(2);
    const errors = [];
    page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    await page.goto(BASE + '/');
    // The subject is text, not markup.
    await row('Evil').waitFor();
    assert.equal(await row('Evil').locator('img').count(), 0);
    assert.match(await row('Evil').locator('.subject').innerText(), /<img src=x onerror/);

    await row('Evil').click();
    const frame = page.frameLocator('#preview');
    await frame.locator('#visible').waitFor();
    // Give any script, event handler or refresh time to fire.
    await page.waitForTimeout(1500);
    await frame.locator('#jslink').click({ timeout: 2000 }).catch(() => {});
    await frame.locator('#sub').click({ timeout: 2000 }).catch(() => {});
    await page.waitForTimeout(500);

    assert.equal(await frame.locator('#visible').innerText(), 'Evil but harmless');
    assert.equal(await frame.locator('body').getAttribute('data-ran'), null);
    assert.equal(await page.evaluate(() => window.__pwned), undefined);
    assert.equal(await page.evaluate(() => window.__xss), undefined);
    assert.ok(!/pwned/.test(await page.title()), `title changed to ${await page.title()}`);
    const sandbox = await page.locator('#preview').getAttribute('sandbox');
    assert.ok(!sandbox.includes('allow-scripts') && !sandbox.includes('allow-same-origin'), sandbox);
    assert.equal((await api('GET', '/api/v1/messages')).total, 2, 'the email deleted mail through the API');
    await shot(page, 'desktop-message-evil');
    // The CSP reports what it blocked: proof the inline script was attempted and refused.
    assert.ok(errors.some((e) => /Content Security Policy|sandboxed|Blocked script/i.test(e)),
      `expected a blocked-script console error, got: ${errors.join(' | ')}`);

    // The same HTML opened directly from the API's own routes, in our origin:
    // the sandbox policy on those responses must stop it too.
    const id = (await api('GET', '/api/v1/search?query=' + encodeURIComponent('subject:Evil'))).messages[0].ID;
    const direct = await browser.newPage();
    try {
      const res = await direct.goto(`${BASE}/view/${id}.html`);
      assert.equal(res.status(), 200);
      assert.match(res.headers()['content-security-policy'] || '', /^sandbox /);
      await direct.waitForTimeout(1000);
      assert.ok(!/pwned/.test(await direct.title()), `title changed to ${await direct.title()}`);
      assert.equal(await direct.locator('#visible').innerText(), 'Evil but harmless');
      assert.equal(await direct.locator('body').getAttribute('data-ran'), null);
      assert.equal((await api('GET', '/api/v1/messages')).total, 2, 'the /view page deleted mail through the API');

      // An HTML attachment and the raw message, opened directly (a middle
      // click on the chip, a pasted link), run nothing either.
      const part = (await api('GET', `/api/v1/message/${id}`)).Attachments.find((a) => a.FileName === 'evil.html');
      for (const url of [`/api/v1/message/${id}/part/${part.PartID}`, `/api/v1/message/${id}/raw`, `/view/${id}.html?embed=1`]) {
        const r = await direct.goto(BASE + url).catch(() => null); // a download ends navigation
        if (r) assert.match(r.headers()['content-security-policy'] || '', /^sandbox /, url);
        await direct.waitForTimeout(500);
        assert.ok(!/pwned/.test(await direct.title().catch(() => '')), `${url} ran script`);
        assert.equal(await direct.evaluate(() => document.body && document.body.getAttribute('data-ran')).catch(() => null), null, url);
        assert.equal((await api('GET', '/api/v1/messages')).total, 2, `${url} deleted mail through the API`);
      }
    } finally {
      await direct.close();
    }
  });

  test('remote images load only after opting in', async () => {
    let hits = 0;
    const seen = [];
    const pixel = http.createServer((req, res) => {
      hits++;
      seen.push(req.url);
      res.writeHead(200, { 'Content-Type': 'image/png' });
      res.end(Buffer.from(RED_PNG_B64, 'base64'));
    });
    await new Promise((r) => pixel.listen(0, '127.0.0.1', r));
    const url = `http://127.0.0.1:${pixel.address().port}/track.png`;
    try {
      await sendMail({
        subject: 'Tracking pixel',
        // An image, a CSS background, a stylesheet, a font, a prefetch and a
        // refresh: every way a mail can phone home by being displayed.
        html: `<html><head><meta http-equiv="refresh" content="0;url=${url}?refresh">
          <link rel="stylesheet" href="${url}?css"><link rel="prefetch" href="${url}?prefetch">
          <style>@font-face{font-family:x;src:url('${url}?font')} body{font-family:x}</style></head>
          <body><p id="p">newsletter</p><img id="remote" src="${url}"><div style="background:url('${url}?bg')">x</div></body></html>`,
      });
      await waitForCount(1);
      await page.goto(BASE + '/');
      await row('Tracking pixel').click();
      await page.frameLocator('#preview').locator('#p').waitFor();
      await page.waitForTimeout(1500);
      assert.equal(hits, 0, `remote content was fetched without consent: ${seen.join(' ')}`);
      // The refresh did not navigate the preview away either.
      assert.equal(await page.frameLocator('#preview').locator('#p').innerText(), 'newsletter');
      assert.equal(await page.locator('#remote-note').isVisible(), true);

      await page.check('#remote');
      await page.frameLocator('#preview').locator('#p').waitFor();
      const until = Date.now() + 15000;
      while (hits === 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      assert.ok(hits > 0, 'remote image not loaded after opting in');
    } finally {
      pixel.close();
    }
  });

  test('tags: add, filter by, remove', async () => {
    await sendMail({ subject: 'Invoice 42' }, { subject: 'Newsletter' });
    await waitForCount(2);
    await page.goto(BASE + '/');
    await row('Invoice 42').click();
    await page.waitForSelector('#msg-subject:text("Invoice 42")');
    await page.fill('#msg-tag-input', 'billing');
    await page.press('#msg-tag-input', 'Enter');
    await page.locator('#msg-tags .tag', { hasText: 'billing' }).waitFor();
    const tagged = await api('GET', '/api/v1/search?query=' + encodeURIComponent('tag:billing'));
    assert.deepEqual(tagged.messages.map((m) => m.Subject), ['Invoice 42']);

    await page.click('#back');
    await row('Invoice 42').locator('.tag', { hasText: 'billing' }).waitFor();
    await page.click('#tags a:has-text("billing")');
    await page.waitForURL(/q=tag%3Abilling/);
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 1);
    assert.match(await rows().first().innerText(), /Invoice 42/);
    await shot(page, 'desktop-tag-filter');

    await rows().first().click();
    await page.click('#msg-tags button[aria-label="Remove tag billing"]');
    await page.locator('#msg-tags .tag').waitFor({ state: 'detached' });
    const msg = await api('GET', '/api/v1/messages');
    assert.ok(msg.messages.every((m) => (m.Tags || []).length === 0));
  });
});

describe('search and keyboard', () => {
  test('search uses the API syntax and keeps the query in the URL', async () => {
    await sendMail(
      { subject: 'alpha report', from: 'Ann <ann@one.test>' },
      { subject: 'beta report', from: 'Bob <bob@two.test>' },
      { subject: 'gamma', from: 'Cid <cid@two.test>' },
    );
    await waitForCount(3);
    await page.goto(BASE + '/');
    await rows().nth(2).waitFor();
    await page.fill('#q', 'report');
    await page.press('#q', 'Enter');
    await page.waitForURL(/\?q=report$/);
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 2);

    await page.fill('#q', 'from:bob@two.test');
    await page.press('#q', 'Enter');
    await page.waitForURL(/q=from%3Abob%40two\.test/);
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 1);
    assert.match(await rows().first().innerText(), /beta report/);

    // The query survives a reload and is shown in the box.
    await page.reload();
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 1);
    assert.equal(await page.inputValue('#q'), 'from:bob@two.test');

    // Live: new matching mail joins the results, others stay out.
    await sendMail({ subject: 'delta', from: 'Bob <bob@two.test>' }, { subject: 'epsilon', from: 'Eve <eve@three.test>' });
    await row('delta').waitFor({ timeout: 15000 });
    await page.waitForTimeout(300);
    assert.equal(await row('epsilon').count(), 0);

    await page.goBack();
    await page.waitForURL(/\?q=report$/);
    assert.equal(await page.inputValue('#q'), 'report');
    await page.click('#q-clear');
    await page.waitForURL(BASE + '/');
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 5);
  });

  test('keyboard: j/k, enter, escape, x, delete', async () => {
    await sendMail({ subject: 'K one' }, { subject: 'K two' }, { subject: 'K three' });
    await waitForCount(3);
    await page.goto(BASE + '/');
    await rows().nth(2).waitFor();
    // Newest first: three, two, one. The cursor starts on the first row.
    await page.keyboard.press('j');
    await page.keyboard.press('j');
    await page.keyboard.press('k');
    assert.match(await page.locator('#messages li.cursor').innerText(), /K two/);
    await page.keyboard.press('Enter');
    await page.waitForSelector('#msg-subject:text("K two")');
    await page.keyboard.press('j');
    await page.waitForSelector('#msg-subject:text("K one")');
    await page.keyboard.press('Escape');
    await page.waitForSelector('#list-view:not([hidden])');
    assert.match(await page.locator('#messages li.cursor').innerText(), /K one/);
    await page.keyboard.press('x');
    assert.equal(await page.locator('#messages li.selected').count(), 1);
    await page.keyboard.press('Delete');
    await page.waitForFunction(() => document.querySelectorAll('#messages li').length === 2);
    const left = await api('GET', '/api/v1/messages');
    assert.deepEqual(left.messages.map((m) => m.Subject), ['K three', 'K two']);
    await page.keyboard.press('/');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'q');
  });
});

describe('layouts', () => {
  test('phone width in dark mode', async () => {
    await sendMail(
      { subject: 'Phone-sized subject that is rather long for a small screen', text: 'A snippet to wrap on a narrow screen.' },
      { subject: 'Second', attachments: [{ filename: 'a.txt', content_type: 'text/plain', data: 'a' }] },
    );
    await waitForCount(2);
    const ctx = await browser.newContext({
      viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, colorScheme: 'dark',
    });
    const phone = await ctx.newPage();
    try {
      await phone.goto(BASE + '/');
      await phone.locator('#messages li').nth(1).waitFor();
      const layout = await phone.evaluate(() => ({
        scrollWidth: document.documentElement.scrollWidth,
        bg: getComputedStyle(document.body).backgroundColor,
        sideRight: document.querySelector('#side').getBoundingClientRect().right,
      }));
      assert.ok(layout.scrollWidth <= 390, `page is ${layout.scrollWidth}px wide on a 390px screen`);
      assert.ok(layout.sideRight <= 0, 'sidebar should be off-screen until the menu opens');
      const [r, g, b] = layout.bg.match(/\d+/g).map(Number);
      assert.ok(r + g + b < 150, `dark mode background is ${layout.bg}`);
      await shot(phone, 'phone-dark-list');

      await phone.click('#menu');
      await phone.waitForFunction(() => document.querySelector('#side').getBoundingClientRect().left >= 0);
      await shot(phone, 'phone-dark-menu');
      await phone.click('#menu');

      await phone.locator('#messages li', { hasText: 'Second' }).click();
      await phone.waitForSelector('#msg-subject:text("Second")');
      assert.ok(await phone.evaluate(() => document.documentElement.scrollWidth) <= 390);
      await shot(phone, 'phone-dark-message');
    } finally {
      await ctx.close();
    }
  });
});
