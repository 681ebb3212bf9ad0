// Runs the npm `cypress-mailpit` command library (unchanged) against a
// mailsafe catcher. Usage: node cypress-mailpit.cjs http://127.0.0.1:PORT
//
// The Cypress test runner itself cannot run here (its binary comes from a
// CDN, not npm), so this file provides the few pieces of the Cypress runtime
// that cypress-mailpit touches: `Cypress.env/config/Commands.add` and
// `cy.request/wrap/wait` with Cypress's semantics (chainables, JSON bodies,
// `qs`, basic `auth`, failing on a non-2xx status). Everything the library
// sends and reads — paths, query strings, request bodies, response fields —
// is its own code talking to the real server.
"use strict";
const assert = require("node:assert/strict");

const base = process.argv[2];
assert.ok(base, "usage: node cypress-mailpit.cjs BASE_URL");

/** A Cypress-like chainable over a promise. */
class Chain {
  constructor(promise) {
    this.p = promise;
  }
  then(fn) {
    return new Chain(
      this.p.then((v) => {
        const r = fn(v);
        return r instanceof Chain ? r.p : r;
      }),
    );
  }
}

async function request(opts) {
  const url = new URL(opts.url);
  for (const [k, v] of Object.entries(opts.qs ?? {})) url.searchParams.set(k, String(v));
  const headers = {};
  if (opts.auth) {
    headers.authorization =
      "Basic " + Buffer.from(`${opts.auth.user}:${opts.auth.pass}`).toString("base64");
  }
  let body;
  if (opts.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(opts.body);
  }
  const res = await fetch(url, { method: opts.method ?? "GET", headers, body });
  const text = await res.text();
  // cy.request fails the test on a non-2xx status unless told otherwise.
  if (!res.ok) throw new Error(`${opts.method} ${url} -> ${res.status}: ${text}`);
  const json = (res.headers.get("content-type") ?? "").includes("json");
  return { status: res.status, headers: res.headers, body: json ? JSON.parse(text) : text };
}

const env = { MAILPIT_URL: base };
const childCommands = {};
global.Cypress = {
  env: (k) => env[k],
  config: (k) => ({ defaultCommandTimeout: 4000 })[k],
  Commands: {
    add(name, options, fn) {
      if (options && options.prevSubject) childCommands[name] = fn;
      else global.cy[name] = (...args) => fn(...args);
    },
  },
};
global.cy = {
  request: (opts) => new Chain(request(opts)),
  wrap: (v) => new Chain(Promise.resolve(v)),
  wait: (ms) => new Chain(new Promise((r) => setTimeout(r, ms))),
};
// Child commands take the previous subject as their first argument.
for (const name of [
  "mailpitGetSubject",
  "mailpitGetRecipientAddress",
  "mailpitGetFromAddress",
  "mailpitGetAttachments",
  "mailpitGetMailHTMlBody",
  "mailpitGetMailTextBody",
  "mailpitSetStatusAsRead",
  "mailpitSetStatusAsUnRead",
]) {
  Chain.prototype[name] = function (...args) {
    return this.then((subject) => childCommands[name](subject, ...args));
  };
}

require("cypress-mailpit");

const done = (chain) => chain.p;

(async () => {
  await done(cy.mailpitDeleteAllEmails());
  const sent = await done(
    cy.mailpitSendMail({
      subject: "Cypress hello",
      to: [{ Email: "qa@example.com", Name: "QA" }],
      textBody: "text from cypress",
      attachments: [
        {
          Content: Buffer.from("attached").toString("base64"),
          Filename: "a.txt",
          ContentType: "text/plain",
        },
      ],
    }),
  );
  assert.match(sent.ID, /^[A-Za-z0-9]+$/);
  await done(cy.mailpitSendMail({ subject: "Second one", to: [{ Email: "other@example.com" }] }));

  const bySubject = await done(cy.mailpitHasEmailsBySubject("Cypress hello"));
  assert.equal(bySubject.messages_count, 1);
  assert.equal(bySubject.messages[0].ID, sent.ID);
  const byTo = await done(cy.mailpitHasEmailsByTo("qa@example.com"));
  assert.equal(byTo.messages[0].Subject, "Cypress hello");
  await done(cy.mailpitNotHasEmailsByTo("nobody@example.com", 0, 50, { timeout: 1000 }));

  const mail = await done(cy.mailpitGetMail(sent.ID));
  assert.equal(await done(cy.wrap(mail).mailpitGetSubject()), "Cypress hello");
  assert.deepEqual(await done(cy.wrap(mail).mailpitGetRecipientAddress()), ["qa@example.com"]);
  assert.equal(await done(cy.wrap(mail).mailpitGetFromAddress()), "from@example.com");
  assert.deepEqual(await done(cy.wrap(mail).mailpitGetAttachments()), ["a.txt"]);
  assert.match(await done(cy.wrap(mail).mailpitGetMailHTMlBody()), /hello from mailpit/);
  assert.match(await done(cy.wrap(mail).mailpitGetMailTextBody()), /text from cypress/);
  // "latest" is the newest message.
  assert.equal((await done(cy.mailpitGetMail())).Subject, "Second one");

  // Opening a message marks it read, as in Mailpit: both have been opened.
  let all = await done(cy.mailpitGetAllMails());
  assert.equal(all.total, 2);
  assert.equal(all.unread, 0);
  await done(cy.mailpitSetAllEmailStatusAsUnRead());
  assert.equal((await done(cy.mailpitGetAllMails())).unread, 2);
  await done(cy.mailpitSetAllEmailStatusAsRead());
  all = await done(cy.mailpitGetAllMails());
  assert.equal(all.unread, 0);
  await done(cy.wrap(mail).mailpitSetStatusAsUnRead());
  all = await done(cy.mailpitGetAllMails());
  assert.equal(all.unread, 1);
  assert.equal(all.messages.find((m) => m.ID === sent.ID).Read, false);

  const search = await done(cy.mailpitSearchEmails("subject:Second"));
  assert.equal(search.messages_count, 1);
  await done(cy.mailpitDeleteEmailsBySearch("subject:Second"));
  await done(cy.mailpitNotHasEmailsBySearch("subject:Second", 0, 50, { timeout: 1000 }));
  await done(cy.mailpitHasEmailsBySearch("subject:Cypress"));

  await done(cy.mailpitDeleteAllEmails());
  assert.equal((await done(cy.mailpitGetAllMails())).total, 0);
  console.log("cypress-mailpit: every command behaved as with Mailpit");
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
