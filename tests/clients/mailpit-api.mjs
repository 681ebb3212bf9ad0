// Runs the npm `mailpit-api` client (unchanged) against a mailsafe catcher
// and asserts what it gets back. Usage: node mailpit-api.mjs http://127.0.0.1:PORT
// Exit code 0 = every call behaved as with Mailpit.
import assert from "node:assert/strict";
import { MailpitClient } from "mailpit-api";

const base = process.argv[2];
assert.ok(base, "usage: node mailpit-api.mjs BASE_URL");
const mp = new MailpitClient(base);

const info = await mp.getInfo();
assert.equal(typeof info.Version, "string");
assert.equal(info.Messages, 0);
const conf = await mp.getConfiguration();
assert.equal(conf.MessageRelay.Enabled, false);

const attachment = Buffer.from("compat attachment body").toString("base64");
const sent = await mp.sendMessage({
  From: { Email: "sender@example.com", Name: "Sender" },
  To: [{ Email: "rcpt@example.com", Name: "Rcpt" }],
  Subject: "Hello from mailpit-api",
  Text: "plain text body",
  HTML: "<p>html body</p>",
  Attachments: [{ Content: attachment, Filename: "note.txt", ContentType: "text/plain" }],
  Tags: ["compat"],
});
assert.match(sent.ID, /^[A-Za-z0-9]{22}$/);

const list = await mp.listMessages();
assert.equal(list.total, 1);
assert.equal(list.unread, 1);
assert.equal(list.messages_count, 1);
assert.equal(list.messages[0].ID, sent.ID);
assert.deepEqual(list.messages[0].Tags, ["compat"]);
assert.deepEqual(list.tags, ["compat"]);

const found = await mp.waitForMessage({ query: "subject:\"from mailpit-api\"" }, { timeout: 5000 });
assert.equal(found.ID, sent.ID);

const msg = await mp.getMessageSummary(sent.ID);
assert.equal(msg.Subject, "Hello from mailpit-api");
assert.equal(msg.From.Address, "sender@example.com");
assert.equal(msg.To[0].Name, "Rcpt");
assert.equal(msg.Text.trim(), "plain text body");
assert.equal(msg.Attachments.length, 1);
assert.equal(msg.Attachments[0].FileName, "note.txt");

const latest = await mp.getMessageSummary();
assert.equal(latest.ID, sent.ID);

const headers = await mp.getMessageHeaders(sent.ID);
assert.deepEqual(headers.Subject, ["Hello from mailpit-api"]);

const blob = await mp.getMessageAttachment(sent.ID, msg.Attachments[0].PartID);
assert.equal(await blob.text(), "compat attachment body");

const source = await mp.getMessageSource(sent.ID);
assert.match(source, /Subject: Hello from mailpit-api/);

assert.match(await mp.renderMessageHTML(sent.ID), /<p>html body<\/p>/);

// The HTML check answers Mailpit's HTMLCheckResponse: a <p> in a body.
const htmlCheck = await mp.htmlCheck(sent.ID);
assert.equal(htmlCheck.Total.Nodes, 1);
assert.ok(htmlCheck.Total.Tests > 100);
assert.ok(htmlCheck.Platforms.windows.includes("Outlook"));
assert.ok(Array.isArray(htmlCheck.Warnings));
assert.deepEqual(Object.keys(await mp.htmlCheck()).sort(), ["Platforms", "Total", "Warnings"]);
assert.equal((await mp.renderMessageText(sent.ID)).trim(), "plain text body");

const search = await mp.searchMessages({ query: "tag:compat", start: 0, limit: 10 });
assert.equal(search.messages_count, 1);

await mp.setReadStatus({ IDs: [sent.ID], Read: false });
assert.equal((await mp.listMessages()).unread, 1);
await mp.setReadStatus({ Read: true });
assert.equal((await mp.listMessages()).unread, 0);

await mp.setTags({ IDs: [sent.ID], Tags: ["one", "two"] });
assert.deepEqual(await mp.getTags(), ["one", "two"]);
await mp.renameTag("one", "three");
assert.deepEqual(await mp.getTags(), ["three", "two"]);
await mp.deleteTag("two");
assert.deepEqual(await mp.getTags(), ["three"]);

await mp.deleteMessagesBySearch({ query: "tag:three" });
assert.equal((await mp.listMessages()).total, 0);

const a = await mp.sendMessage({ From: { Email: "a@example.com" }, To: [{ Email: "b@example.com" }], Subject: "a" });
await mp.sendMessage({ From: { Email: "a@example.com" }, To: [{ Email: "b@example.com" }], Subject: "b" });
const waited = await mp.waitForMessages({ query: "from:a@example.com", limit: 2 }, { timeout: 5000 });
assert.equal(waited.messages.length, 2);
await mp.deleteMessages({ IDs: [a.ID] });
assert.equal((await mp.listMessages()).total, 1);
await mp.deleteMessages();
assert.equal((await mp.listMessages()).total, 0);

await assert.rejects(mp.getMessageSummary("doesnotexist"));

console.log("mailpit-api client: all checks passed");
