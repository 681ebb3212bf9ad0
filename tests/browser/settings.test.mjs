// The browser-side settings, against the server run.sh started: the HTML
// preview's widths (Mailpit's desktop / tablet / phone sizes, kept across
// reloads), the theme (light / dark / auto, kept; the system preference
// emulated through CDP's Emulation.setEmulatedMedia) and opt-in browser
// notifications for new mail (the permission granted through CDP's
// Browser.grantPermissions, window.Notification wrapped to see what the
// page does with it).
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import {
  BASE, clearMailbox, eventually, launch, sendMail, shot, waitForCount,
} from './lib.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await browser?.close(); });
beforeEach(async () => { await clearMailbox(); });

/** A fresh browser profile (own localStorage and permissions) and a page in it. */
async function freshPage(options = {}) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, ...options });
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e.message));
  return { context, page };
}

test('preview widths: desktop, tablet and phone, kept across reloads', async () => {
  await sendMail({
    subject: 'Responsive mail',
    // The mail's own media query tells which width it is laid out for.
    html: '<html><head><style>#w{color:rgb(0,0,255)} @media (max-width: 400px){#w{color:rgb(255,0,0)}}</style></head>' +
      '<body><p id="w">width</p></body></html>',
  });
  await waitForCount(1);
  const { context, page } = await freshPage();
  try {
    await page.goto(BASE + '/');
    await page.locator('#messages li', { hasText: 'Responsive mail' }).click();
    const inner = page.frameLocator('#preview').locator('#w');
    await inner.waitFor();
    const seen = () => inner.evaluate((e) => ({ width: window.innerWidth, color: getComputedStyle(e).color }));
    assert.equal(await page.getAttribute('#widths [data-width=desktop]', 'aria-pressed'), 'true');
    const desktop = await seen();
    assert.ok(desktop.width > 800, `desktop preview is ${desktop.width}px`);
    assert.equal(desktop.color, 'rgb(0, 0, 255)');

    await page.click('#widths [data-width=phone]');
    await eventually(async () => (await seen()).width === 322, 'a 322px phone preview');
    assert.equal((await seen()).color, 'rgb(255, 0, 0)', "the mail's phone layout applies");
    assert.equal(await page.getAttribute('#widths [data-width=phone]', 'aria-pressed'), 'true');
    assert.equal(await page.getAttribute('#widths [data-width=desktop]', 'aria-pressed'), 'false');
    await shot(page, 'preview-phone');

    await page.reload();
    await inner.waitFor();
    assert.equal((await seen()).width, 322, 'the phone width is kept across a reload');
    assert.equal(await page.getAttribute('#widths [data-width=phone]', 'aria-pressed'), 'true');

    await page.click('#widths [data-width=tablet]');
    await eventually(async () => (await seen()).width === 768, 'a 768px tablet preview');
    // Only the HTML preview has widths.
    await page.click('#tab-text');
    assert.equal(await page.locator('#widths').isVisible(), false);
    await page.click('#tab-html');
    await page.click('#widths [data-width=desktop]');
    await eventually(async () => (await seen()).width > 800, 'the full-width preview again');
  } finally {
    await context.close();
  }
});

test('theme: auto follows the system, light and dark override it, kept across reloads', async () => {
  const { context, page } = await freshPage();
  try {
    const cdp = await context.newCDPSession(page);
    const system = (value) => cdp.send('Emulation.setEmulatedMedia', { features: [{ name: 'prefers-color-scheme', value }] });
    const dark = async () => {
      const [r, g, b] = (await page.evaluate(() => getComputedStyle(document.body).backgroundColor)).match(/\d+/g).map(Number);
      return r + g + b < 150;
    };
    const choose = async (theme) => {
      await page.click('#settings-btn');
      await page.check(`#theme-${theme}`);
      await page.click('#settings-close');
    };
    await system('dark');
    await page.goto(BASE + '/');
    await page.waitForSelector('#conn.live');
    assert.equal(await dark(), true, 'auto: dark system, dark page');

    await choose('light');
    assert.equal(await dark(), false, 'light chosen on a dark system');
    await page.reload();
    await page.waitForSelector('#conn.live');
    assert.equal(await dark(), false, 'light kept across a reload');
    assert.equal(await page.evaluate(() => localStorage.getItem('mp-theme')), 'light');
    await page.click('#settings-btn');
    assert.equal(await page.isChecked('#theme-light'), true);
    await page.click('#settings-close');

    await choose('auto');
    assert.equal(await dark(), true, 'auto again: dark');
    await system('light');
    await eventually(async () => !(await dark()), 'auto following the system to light');

    await choose('dark');
    assert.equal(await dark(), true, 'dark chosen on a light system');
    await page.reload();
    await page.waitForSelector('#conn.live');
    assert.equal(await dark(), true, 'dark kept across a reload');
    await shot(page, 'theme-dark');
  } finally {
    await context.close();
  }
});

/** Records what the page does with the Notification API. */
function spyOnNotifications() {
  const Real = window.Notification;
  const spy = { created: [], requests: 0, reads: 0 };
  window.__notify = spy;
  class Spy extends Real {
    constructor(title, options) {
      super(title, options);
      spy.created.push({ title, body: options && options.body });
    }
  }
  Object.defineProperty(Spy, 'permission', { get: () => { spy.reads++; return Real.permission; } });
  Spy.requestPermission = (...args) => { spy.requests++; return Real.requestPermission(...args); };
  window.Notification = Spy;
}

test('browser notifications for new mail: only once enabled, kept, and off again', async () => {
  const { context, page } = await freshPage();
  try {
    // Playwright grants through CDP's Browser.grantPermissions: the browser
    // would show notifications without asking.
    await context.grantPermissions(['notifications'], { origin: new URL(BASE).origin });
    await page.addInitScript(spyOnNotifications);
    const spy = () => page.evaluate(() => window.__notify);
    const arrives = async (subject) => {
      await sendMail({ subject, from: 'Alice <alice@example.test>' });
      // The notification is decided before the row is drawn.
      await page.locator('#messages li', { hasText: subject }).waitFor({ timeout: 15000 });
    };

    await page.goto(BASE + '/');
    await page.waitForSelector('#conn.live');
    await arrives('Before opting in');
    assert.deepEqual(await spy(), { created: [], requests: 0, reads: 0 }, 'the API is not touched before opting in');

    await page.click('#settings-btn');
    await page.check('#notify');
    await eventually(async () => (await spy()).requests === 1, 'the permission asked for');
    assert.equal(await page.isChecked('#notify'), true);
    await page.click('#settings-close');
    await arrives('After opting in');
    assert.deepEqual((await spy()).created, [{ title: 'New mail from: alice@example.test', body: 'After opting in' }]);

    // Kept across a reload, without asking again.
    await page.reload();
    await page.waitForSelector('#conn.live');
    await arrives('After a reload');
    assert.deepEqual((await spy()).created, [{ title: 'New mail from: alice@example.test', body: 'After a reload' }]);
    assert.equal((await spy()).requests, 0);

    // Off: nothing, and still nothing after a reload.
    await page.click('#settings-btn');
    await page.uncheck('#notify');
    await page.click('#settings-close');
    await page.reload();
    await page.waitForSelector('#conn.live');
    await arrives('After opting out');
    assert.deepEqual(await spy(), { created: [], requests: 0, reads: 0 });
  } finally {
    await context.close();
  }
});
