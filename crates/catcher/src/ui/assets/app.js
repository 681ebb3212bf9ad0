// mailsafe web UI: mailbox list, message view, search, tags, live updates.
//
// Plain JavaScript, no build step. Every piece of mail data reaches the DOM
// through textContent or attribute setters, never innerHTML: subjects, names
// and snippets are attacker-controlled. A message's HTML body is shown only
// inside a sandboxed srcdoc iframe (no allow-scripts, no allow-same-origin)
// that carries its own Content-Security-Policy.
//
// State lives in the URL (?q=search&start=offset&m=messageID) so that
// searches and messages can be bookmarked, reloaded and navigated with the
// browser's back button.
'use strict';

(() => {
  const PAGE = 50;
  const $ = (id) => document.getElementById(id);
  // The path everything is served under (MP_WEBROOT: '/' or '/mail/'), set
  // by the server on <html data-webroot>. Paths below are written from '/'
  // and go through at() on their way out.
  const ROOT = document.documentElement.dataset.webroot || '/';
  // MP_BLOCK_REMOTE_CSS_AND_FONTS: the page's policy lets no remote
  // stylesheet or font into the preview, whatever the user opts in to.
  const BLOCK_REMOTE_CSS = document.documentElement.dataset.blockRemoteCss === '1';
  const at = (path) => ROOT + path.replace(/^\//, '');

  const state = {
    q: '',
    start: 0,
    open: null,          // ID of the open message, or null for the list
    messages: [],        // the current page of MessageSummary
    total: 0,            // messages matching the current list/search
    mailboxTotal: 0,     // whole mailbox
    unread: 0,           // whole mailbox unread
    selected: new Set(),
    cursor: 0,           // index in messages of the keyboard cursor
    message: null,       // the open Message
    tab: 'html',
    remote: false,       // load remote content in the open message
    statsSeen: false,    // the server sends "stats" events: trust them for counts
    listSeq: 0,          // guards against out-of-order list responses
    label: '',           // MP_LABEL, to tell several catchers apart
    relay: null,         // /api/v1/webui MessageRelay when a relay server is set
    chaos: false,        // /api/v1/webui ChaosEnabled: Settings shows the triggers
    spam: false,         // /api/v1/webui SpamAssassin: the spam check is enabled
    htmlCheck: true,     // false once the server says the HTML check is not enabled
    checks: {},          // the open message's check results: { links, spam, html }
    width: storedWidth(),// HTML preview width: desktop, tablet or phone
  };

  // ---------- helpers ----------

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : v);
      }
    }
    for (const c of children) {
      if (c === null || c === undefined || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  class ApiError extends Error {
    // text: the server's own answer, for showing to the user.
    constructor(status, msg, text) { super(msg); this.status = status; this.text = text; }
  }

  async function api(method, path, body) {
    const opts = { method, headers: {} };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const res = await fetch(at(path), opts);
    const type = res.headers.get('Content-Type') || '';
    if (!res.ok) {
      const text = await res.text().catch(() => '');
      throw new ApiError(res.status, `${method} ${path}: ${res.status} ${text.slice(0, 200)}`, text.slice(0, 500));
    }
    if (type.includes('application/json')) return res.json();
    return res.text();
  }

  let toastTimer = 0;
  function toast(msg) {
    const t = $('toast');
    t.textContent = msg;
    t.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { t.hidden = true; }, 4000);
  }

  function fail(e) {
    console.error(e);
    toast(e && e.message ? e.message : String(e));
  }

  function fmtAddr(a) {
    if (!a) return '';
    if (a.Name && a.Address) return `${a.Name} <${a.Address}>`;
    return a.Name || a.Address || '';
  }

  function fmtAddrs(list) {
    return (list || []).map(fmtAddr).join(', ');
  }

  function fmtSize(n) {
    if (!n && n !== 0) return '';
    if (n < 1024) return `${n} B`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
    return `${(n / 1024 / 1024).toFixed(1)} MB`;
  }

  function fmtTime(iso) {
    const d = new Date(iso);
    if (isNaN(d)) return '';
    const now = new Date();
    if (d.toDateString() === now.toDateString()) {
      return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    }
    if (d.getFullYear() === now.getFullYear()) {
      return d.toLocaleDateString([], { month: 'short', day: 'numeric' });
    }
    return d.toLocaleDateString();
  }

  // A tag name as a search term: quoted when it holds spaces or quotes.
  function tagTerm(t) {
    return /[\s"]/.test(t) ? `tag:"${t.replace(/"/g, '')}"` : `tag:${t}`;
  }

  function partURL(id, part) {
    return at(`/api/v1/message/${encodeURIComponent(id)}/part/${encodeURIComponent(part)}`);
  }

  // Settings kept in the browser. Where Mailpit keeps the same setting, the
  // key is Mailpit's, so a browser that used Mailpit at this address keeps it.
  function stored(key) {
    try { return localStorage.getItem(key); } catch (e) { return null; }
  }
  function store(key, value) {
    try {
      if (value === null) localStorage.removeItem(key); else localStorage.setItem(key, value);
    } catch (e) { /* storage disabled: the setting lasts this page only */ }
  }

  // (A function declaration, not a const: state's initialiser calls it.)
  function storedWidth() {
    const w = stored('mailsafe-preview-width');
    return ['desktop', 'tablet', 'phone'].includes(w) ? w : 'desktop';
  }

  // ---------- URL state ----------

  function readURL() {
    const p = new URLSearchParams(location.search);
    state.q = (p.get('q') || '').trim();
    state.start = Math.max(0, parseInt(p.get('start') || '0', 10) || 0);
    state.open = p.get('m') || null;
  }

  function urlFor(q, start, open) {
    const p = new URLSearchParams();
    if (q) p.set('q', q);
    if (start) p.set('start', String(start));
    if (open) p.set('m', open);
    const s = p.toString();
    return at(s ? `/?${s}` : '/');
  }

  function go(q, start, open, replace) {
    const url = urlFor(q, start, open);
    if (url !== location.pathname + location.search) {
      history[replace ? 'replaceState' : 'pushState'](null, '', url);
    }
    route();
  }

  async function route() {
    const prevQ = state.q, prevStart = state.start;
    readURL();
    $('q').value = state.q;
    $('q-clear').hidden = !state.q;
    document.body.classList.remove('side-open');
    markNav();
    if (state.open) {
      showMessageView(true);
      await openMessage(state.open);
      // Keep the list behind the message current, for j/k and "Back".
      if (!state.messages.length || prevQ !== state.q || prevStart !== state.start) {
        loadList().catch(fail);
      }
    } else {
      showMessageView(false);
      state.message = null;
      await loadList();
    }
  }

  function showMessageView(on) {
    $('list-view').hidden = on;
    $('message-view').hidden = !on;
    if (!on) $('pane').replaceChildren();
  }

  // ---------- counts and title ----------

  function renderCounts() {
    updateTitle();
    $('inbox-unread').textContent = state.unread > 0 ? String(state.unread) : '';
    $('total-line').textContent = `${state.mailboxTotal} message${state.mailboxTotal === 1 ? '' : 's'}, ${state.unread} unread`;
    const from = state.total ? state.start + 1 : 0;
    const to = Math.min(state.start + state.messages.length, state.total);
    $('page-info').textContent = state.total ? `${from}–${to} of ${state.total}` : '';
    $('prev').disabled = state.start <= 0;
    $('next').disabled = state.start + PAGE >= state.total;
  }

  // "(unread) [subject – ]mailsafe": the count first, so it shows in a narrow tab.
  function updateTitle() {
    const count = state.unread > 0 ? `(${state.unread}) ` : '';
    const m = state.open && state.message;
    document.title = `${count}${m ? `${m.Subject || '(no subject)'} – ` : ''}${state.label ? `${state.label} – ` : ''}mailsafe`;
  }

  function markNav() {
    for (const a of document.querySelectorAll('.nav-item, .tag-nav a')) {
      a.classList.toggle('active', (a.dataset.q || '') === state.q);
    }
  }

  // ---------- list ----------

  async function loadList() {
    const seq = ++state.listSeq;
    const path = state.q
      ? `/api/v1/search?query=${encodeURIComponent(state.q)}&start=${state.start}&limit=${PAGE}`
      : `/api/v1/messages?start=${state.start}&limit=${PAGE}`;
    let data;
    try {
      data = await api('GET', path);
    } catch (e) {
      if (seq !== state.listSeq) return;
      state.messages = [];
      state.total = 0;
      renderList();
      $('empty').textContent = e.status === 400 ? `Invalid search: ${e.message}` : `Could not load messages: ${e.message}`;
      $('empty').hidden = false;
      return;
    }
    if (seq !== state.listSeq) return;
    state.messages = data.messages || [];
    state.total = data.messages_count ?? data.count ?? data.total ?? state.messages.length;
    if (!state.q) state.total = data.total ?? state.total;
    state.mailboxTotal = data.total ?? state.mailboxTotal;
    state.unread = data.unread ?? state.unread;
    if (Array.isArray(data.tags)) renderTags(data.tags);
    const ids = new Set(state.messages.map((m) => m.ID));
    for (const id of [...state.selected]) if (!ids.has(id)) state.selected.delete(id);
    state.cursor = Math.min(state.cursor, Math.max(0, state.messages.length - 1));
    if (state.open) {
      const i = state.messages.findIndex((m) => m.ID === state.open);
      if (i >= 0) state.cursor = i;
    }
    // Past the last page (e.g. after deleting its messages): go back one page.
    if (!state.messages.length && state.start > 0 && state.total > 0) {
      go(state.q, Math.max(0, state.start - PAGE), state.open, true);
      return;
    }
    renderList();
  }

  function renderSearchInfo() {
    const info = $('search-info');
    if (!state.q) { info.hidden = true; return; }
    info.hidden = false;
    info.replaceChildren(
      `${state.total} result${state.total === 1 ? '' : 's'} for `,
      el('strong', { text: state.q }), ' ',
      el('a', { href: at('/'), onclick: (e) => { e.preventDefault(); go('', 0, null); } }, 'clear'),
    );
  }

  function rowFor(m, i) {
    const tags = (m.Tags || []).map((t) => el('span', { class: 'tag' }, t));
    const check = el('input', {
      type: 'checkbox',
      class: 'check',
      'aria-label': 'Select',
      checked: state.selected.has(m.ID),
      onclick: (e) => { e.stopPropagation(); },
      onchange: (e) => { toggleSelect(m.ID, e.target.checked); },
    });
    const from = m.From ? (m.From.Name || m.From.Address) : '';
    const li = el('li', {
      'data-id': m.ID,
      role: 'option',
      class: [m.Read ? 'read' : 'unread', state.selected.has(m.ID) ? 'selected' : '', i === state.cursor ? 'cursor' : ''].join(' ').trim(),
      'aria-selected': state.selected.has(m.ID) ? 'true' : 'false',
      title: m.From ? fmtAddr(m.From) : '',
    },
      check,
      el('span', { class: 'from' }, from || '(no sender)'),
      el('span', { class: 'body' },
        el('span', { class: 'subject-line' }, ...tags, el('span', { class: 'subject' }, m.Subject || '(no subject)')),
        el('span', { class: 'snippet' }, m.Snippet || ''),
      ),
      el('span', { class: 'time', title: new Date(m.Created).toLocaleString() },
        fmtTime(m.Created),
        m.Attachments > 0 ? el('span', { class: 'clip', title: `${m.Attachments} attachment${m.Attachments === 1 ? '' : 's'}`, role: 'img', 'aria-label': 'has attachments' }) : null,
      ),
    );
    li.addEventListener('click', (e) => {
      if (e.shiftKey || e.ctrlKey || e.metaKey) { toggleSelect(m.ID); return; }
      state.cursor = state.messages.findIndex((x) => x.ID === m.ID);
      go(state.q, state.start, m.ID);
    });
    return li;
  }

  function renderList() {
    const ul = $('messages');
    ul.replaceChildren(...state.messages.map(rowFor));
    const empty = $('empty');
    empty.hidden = state.messages.length > 0;
    if (!state.messages.length) {
      empty.textContent = state.q ? 'No messages match this search.' : 'No messages yet. Send mail to the SMTP port and it appears here.';
    }
    renderSearchInfo();
    renderSelection();
    renderCounts();
  }

  function renderSelection() {
    const n = state.selected.size;
    const all = $('select-all');
    all.checked = n > 0 && n === state.messages.length;
    all.indeterminate = n > 0 && n < state.messages.length;
    $('btn-read').textContent = n ? 'Mark read' : 'Mark all read';
    $('btn-unread').disabled = n === 0;
    $('btn-delete').disabled = n === 0;
    $('bulk-tag').disabled = n === 0;
    $('btn-delete-all').textContent = state.q ? 'Delete all results' : 'Delete all';
    $('btn-delete-all').disabled = state.total === 0;
  }

  function toggleSelect(id, on) {
    const want = on === undefined ? !state.selected.has(id) : on;
    if (want) state.selected.add(id); else state.selected.delete(id);
    const li = $('messages').querySelector(`li[data-id="${CSS.escape(id)}"]`);
    if (li) {
      li.classList.toggle('selected', want);
      li.setAttribute('aria-selected', want ? 'true' : 'false');
      li.querySelector('input.check').checked = want;
    }
    renderSelection();
  }

  function moveCursor(delta) {
    if (!state.messages.length) return;
    state.cursor = Math.max(0, Math.min(state.messages.length - 1, state.cursor + delta));
    const rows = $('messages').children;
    for (let i = 0; i < rows.length; i++) rows[i].classList.toggle('cursor', i === state.cursor);
    const row = rows[state.cursor];
    if (row) row.scrollIntoView({ block: 'nearest' });
  }

  // IDs an action applies to: the selection, else the keyboard cursor.
  function targetIDs() {
    if (state.selected.size) return [...state.selected];
    const m = state.messages[state.cursor];
    return m ? [m.ID] : [];
  }

  async function setRead(ids, read) {
    if (ids && ids.length) {
      await api('PUT', '/api/v1/messages', { IDs: ids, Read: read });
      for (const m of state.messages) if (ids.includes(m.ID)) m.Read = read;
    } else if (state.q) {
      await api('PUT', '/api/v1/messages', { Search: state.q, Read: read });
      await loadList();
      return;
    } else {
      await api('PUT', '/api/v1/messages', { Read: read });
      for (const m of state.messages) m.Read = read;
    }
    if (!state.statsSeen) await refreshCounts();
    renderList();
  }

  async function deleteIDs(ids) {
    if (!ids.length) return;
    await api('DELETE', '/api/v1/messages', { IDs: ids });
    removeLocal(ids);
    if (!state.statsSeen) await refreshCounts();
    // Refill the page from the server so it stays PAGE long.
    loadList().catch(fail);
  }

  function removeLocal(ids) {
    const gone = new Set(ids);
    const before = state.messages.length;
    const cursorID = state.messages[state.cursor] && state.messages[state.cursor].ID;
    state.messages = state.messages.filter((m) => !gone.has(m.ID));
    const removed = before - state.messages.length;
    state.total = Math.max(0, state.total - removed);
    for (const id of ids) state.selected.delete(id);
    if (cursorID && gone.has(cursorID)) {
      state.cursor = Math.min(state.cursor, Math.max(0, state.messages.length - 1));
    }
    return removed;
  }

  async function deleteAll() {
    const what = state.q ? `all ${state.total} messages matching "${state.q}"` : `all ${state.total} messages`;
    if (!confirm(`Delete ${what}? This cannot be undone.`)) return;
    if (state.q) {
      await api('DELETE', `/api/v1/search?query=${encodeURIComponent(state.q)}`);
    } else {
      await api('DELETE', '/api/v1/messages', {});
    }
    state.selected.clear();
    await loadList();
    await refreshCounts();
  }

  async function refreshCounts() {
    try {
      const d = await api('GET', '/api/v1/messages?limit=1');
      state.mailboxTotal = d.total ?? state.mailboxTotal;
      state.unread = d.unread ?? state.unread;
      renderCounts();
    } catch (e) { /* counts are cosmetic; the next event corrects them */ }
  }

  // ---------- tags ----------

  let knownTags = [];
  function renderTags(tags) {
    knownTags = tags.slice().sort((a, b) => a.localeCompare(b));
    const box = $('tags');
    box.replaceChildren(...knownTags.map((t) => {
      const q = tagTerm(t);
      return el('a', {
        href: urlFor(q, 0, null),
        'data-q': q,
        onclick: (e) => { e.preventDefault(); go(q, 0, null); },
      }, el('span', { class: 'tag' }, t));
    }));
    if (!knownTags.length) box.append(el('p', { class: 'muted small', text: 'No tags' }));
    markNav();
  }

  let tagsTimer = 0;
  function refreshTagsSoon() {
    clearTimeout(tagsTimer);
    tagsTimer = setTimeout(() => {
      api('GET', '/api/v1/tags').then((t) => { if (Array.isArray(t)) renderTags(t); }).catch(() => {});
    }, 200);
  }

  async function setTags(id, tags) {
    await api('PUT', '/api/v1/tags', { IDs: [id], Tags: tags });
    applyUpdate({ ID: id, Tags: tags });
    refreshTagsSoon();
  }

  async function addTagToIDs(ids, tag) {
    for (const id of ids) {
      const m = state.messages.find((x) => x.ID === id) || (state.message && state.message.ID === id ? state.message : null);
      const cur = m ? (m.Tags || []) : [];
      if (!cur.includes(tag)) await setTags(id, [...cur, tag]);
    }
  }

  // ---------- message view ----------

  async function openMessage(id) {
    $('msg-gone').hidden = true;
    $('msg').hidden = false;
    let m;
    try {
      m = await api('GET', `/api/v1/message/${encodeURIComponent(id)}`);
    } catch (e) {
      if (state.open !== id) return;
      if (e.status === 404) { showGone(); return; }
      fail(e);
      return;
    }
    if (state.open !== id) return; // the user moved on meanwhile
    state.message = m;
    // Opening marks the message read (the API does so on GET); mirror it.
    const summary = state.messages.find((x) => x.ID === id);
    if (summary && !summary.Read) {
      summary.Read = true;
      if (!state.statsSeen) state.unread = Math.max(0, state.unread - 1);
      renderCounts();
    }
    state.remote = false;
    $('remote').checked = false;
    state.checks = {};
    renderMessage();
    selectTab(m.HTML ? 'html' : 'text');
    startChecks(m);
  }

  function showGone() {
    $('msg-gone').hidden = false;
    $('msg').hidden = true;
    state.message = null;
  }

  function renderMessage() {
    const m = state.message;
    $('msg-subject').textContent = m.Subject || '(no subject)';
    updateTitle();
    const meta = $('msg-meta');
    const rows = [
      ['From', fmtAddr(m.From)],
      ['To', fmtAddrs(m.To)],
      ['Cc', fmtAddrs(m.Cc)],
      ['Bcc', fmtAddrs(m.Bcc)],
      ['Reply-To', fmtAddrs(m.ReplyTo)],
      ['Date', m.Date ? new Date(m.Date).toLocaleString() : ''],
      ['Size', fmtSize(m.Size)],
    ];
    meta.replaceChildren();
    for (const [k, v] of rows) {
      if (!v) continue;
      meta.append(el('dt', { text: k }), el('dd', { text: v }));
    }
    renderMsgTags();
    const att = $('msg-attachments');
    // Images the HTML shows through cid: are part of the body, not files to
    // download: no chip for them (mailers often mark them "attachment").
    const shown = cidRefs(m.HTML);
    const files = (m.Attachments || []).filter((a) => !(a.ContentID && shown.has(cidKey(a.ContentID))));
    att.replaceChildren(...files.map((a) => el('li', null,
      el('a', {
        href: partURL(m.ID, a.PartID),
        download: a.FileName || `part-${a.PartID}`,
        title: `${a.ContentType || ''} ${fmtSize(a.Size)}`,
      }, el('span', { class: 'clip' }), `${a.FileName || `part ${a.PartID}`} (${fmtSize(a.Size)})`),
    )));
    const dl = $('msg-download');
    dl.href = at(`/api/v1/message/${encodeURIComponent(m.ID)}/raw`);
    dl.setAttribute('download', `${m.ID}.eml`);
    $('msg-release').hidden = !state.relay;
    $('tab-html').disabled = !m.HTML;
    $('tab-source').disabled = !m.HTML;
    $('tab-text').disabled = !m.Text && !!m.HTML;
    // Shown once the server has answered the check (it may not be enabled).
    $('tab-htmlcheck').hidden = !(m.HTML && state.htmlCheck === true);
    $('tab-spam').hidden = !state.spam;
    for (const id of ['htmlcheck-score', 'links-score', 'spam-score']) setScore(id, '', '');
    const i = state.messages.findIndex((x) => x.ID === m.ID);
    $('msg-newer').disabled = i <= 0;
    $('msg-older').disabled = i < 0 || i >= state.messages.length - 1;
  }

  function renderMsgTags() {
    const m = state.message;
    const box = $('msg-tags');
    box.replaceChildren(...(m.Tags || []).map((t) => el('span', { class: 'tag' }, t,
      el('button', {
        type: 'button',
        'aria-label': `Remove tag ${t}`,
        title: 'Remove tag',
        onclick: () => setTags(m.ID, (m.Tags || []).filter((x) => x !== t)).catch(fail),
      }, '×'),
    )));
  }

  // Tabs follow the ARIA tabs pattern: the selected tab is the one in the
  // Tab order, arrow keys (and Home/End) move between tabs and select.
  function selectTab(tab) {
    state.tab = tab;
    for (const b of document.querySelectorAll('.tabs [role=tab]')) {
      const on = b.dataset.tab === tab;
      b.setAttribute('aria-selected', on ? 'true' : 'false');
      b.tabIndex = on ? 0 : -1;
      if (on) $('pane').setAttribute('aria-labelledby', b.id);
    }
    renderPane().catch(fail);
  }

  function onTabKey(e) {
    const tabs = [...document.querySelectorAll('.tabs [role=tab]')].filter((b) => !b.hidden && !b.disabled);
    const i = tabs.indexOf(document.activeElement);
    if (i < 0) return;
    let j;
    if (e.key === 'ArrowRight') j = (i + 1) % tabs.length;
    else if (e.key === 'ArrowLeft') j = (i - 1 + tabs.length) % tabs.length;
    else if (e.key === 'Home') j = 0;
    else if (e.key === 'End') j = tabs.length - 1;
    else return;
    e.preventDefault();
    tabs[j].focus();
    selectTab(tabs[j].dataset.tab);
  }

  function setScore(id, text, level) {
    const b = $(id);
    b.textContent = text;
    b.className = `score ${level}`.trim();
  }

  // Remote references in mail HTML: http(s) or protocol-relative URLs in
  // attributes or CSS. Only decides whether to offer the opt-in toggle; the
  // CSP does the actual blocking.
  const REMOTE_RE = /(?:src|href|background|srcset|poster)\s*=\s*["']?\s*(?:https?:)?\/\/|url\(\s*["']?\s*(?:https?:)?\/\//i;

  // The document put into the preview iframe: our CSP first, so it covers
  // everything the mail contains.
  function previewDoc(m, remote) {
    const origin = location.origin;
    const ext = remote ? ' http: https:' : '';
    const cssExt = BLOCK_REMOTE_CSS ? '' : ext;
    const csp = [
      "default-src 'none'",
      "script-src 'none'",
      `img-src ${origin} data: cid:${ext}`,
      `style-src 'unsafe-inline'${cssExt}`,
      `font-src data:${cssExt}`,
      `media-src ${origin} data:${ext}`,
      "form-action 'none'",
      "base-uri 'none'",
    ].join('; ');
    const head = `<meta http-equiv="Content-Security-Policy" content="${csp}">` +
      '<meta name="referrer" content="no-referrer"><base target="_blank">';
    let html = inlineCIDs(m, m.HTML || '');
    const doctype = html.match(/^\s*(<!doctype[^>]*>)/i);
    if (doctype) return doctype[1] + head + html.slice(doctype[0].length);
    return head + html;
  }

  // A Content-ID as cid: URLs name it: no angle brackets, case-insensitive.
  function cidKey(id) {
    let key = id.replace(/^<|>$/g, '');
    try { key = decodeURIComponent(key); } catch (e) { /* keep as is */ }
    return key.toLowerCase();
  }

  // The Content-IDs an HTML body refers to with cid: URLs.
  function cidRefs(html) {
    const refs = new Set();
    for (const match of (html || '').matchAll(/cid:([^"'\s)>]+)/gi)) refs.add(cidKey(match[1]));
    return refs;
  }

  // Rewrites cid: references to the API's part URLs, so inline images show.
  function inlineCIDs(m, html) {
    const map = new Map();
    for (const a of [...(m.Inline || []), ...(m.Attachments || [])]) {
      if (a.ContentID) map.set(a.ContentID.replace(/^<|>$/g, '').toLowerCase(), a.PartID);
    }
    if (!map.size) return html;
    return html.replace(/cid:([^"'\s)>]+)/gi, (all, ref) => {
      let key = ref;
      try { key = decodeURIComponent(ref); } catch (e) { /* keep as is */ }
      const part = map.get(key.toLowerCase());
      return part ? location.origin + partURL(m.ID, part) : all;
    });
  }

  async function renderPane() {
    const m = state.message;
    if (!m) return;
    const pane = $('pane');
    const tab = state.tab;
    const hasRemote = !!m.HTML && REMOTE_RE.test(m.HTML);
    $('remote-toggle').hidden = !(tab === 'html' && hasRemote);
    $('remote-note').hidden = !(tab === 'html' && hasRemote && !state.remote);
    $('widths').hidden = tab !== 'html';
    if (tab === 'html') {
      const frame = el('iframe', {
        id: 'preview',
        title: 'Message HTML',
        // No allow-scripts, no allow-same-origin: the mail runs no code and
        // gets an opaque origin, so it cannot reach the API or this page.
        // Popups let links open in a new tab, outside the sandbox.
        sandbox: 'allow-popups allow-popups-to-escape-sandbox',
        referrerpolicy: 'no-referrer',
      });
      frame.srcdoc = previewDoc(m, state.remote);
      pane.replaceChildren(el('div', { id: 'preview-box', class: `preview-box ${state.width}` }, frame));
    } else if (tab === 'source') {
      // The HTML as sent (not the preview's rewritten copy), as text.
      pane.replaceChildren(el('pre', { id: 'source-body' }, el('code', null, m.HTML || '')));
    } else if (tab === 'links') {
      renderLinkCheck(pane, m);
    } else if (tab === 'spam') {
      renderSpamCheck(pane);
    } else if (tab === 'htmlcheck') {
      renderHTMLCheck(pane);
    } else if (tab === 'text') {
      pane.replaceChildren(el('pre', { id: 'text-body' }, ...linkify(m.Text || '')));
    } else if (tab === 'headers') {
      pane.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
      const h = await api('GET', `/api/v1/message/${encodeURIComponent(m.ID)}/headers`);
      if (state.tab !== 'headers' || state.message !== m) return;
      const table = el('table', { class: 'headers', id: 'headers-table' });
      for (const k of Object.keys(h).sort()) {
        for (const v of h[k]) table.append(el('tr', null, el('td', { text: k }), el('td', { text: v })));
      }
      pane.replaceChildren(table);
    } else if (tab === 'raw') {
      pane.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
      const raw = await api('GET', `/api/v1/message/${encodeURIComponent(m.ID)}/raw`);
      if (state.tab !== 'raw' || state.message !== m) return;
      const LIMIT = 1 << 20;
      const text = typeof raw === 'string' ? raw : JSON.stringify(raw);
      const pre = el('pre', { id: 'raw-body' }, text.length > LIMIT ? text.slice(0, LIMIT) : text);
      pane.replaceChildren(pre);
      if (text.length > LIMIT) pane.append(el('p', { class: 'muted', text: 'Showing the first 1 MiB; download the .eml for the rest.' }));
    }
  }

  // ---------- checks: Link Check, Spam Analysis, HTML Check (Mailpit's) ----------

  // What an API error says, for the user: the server's own answer.
  function errorText(e) {
    if (e instanceof ApiError) return (e.text || '').trim() || `HTTP ${e.status}`;
    return e && e.message ? e.message : String(e);
  }

  // The checks that run when a message opens, as Mailpit's do (their scores
  // show on the tabs): spam when the server has spamd, the HTML check when
  // the message has HTML. The link check sends requests to the mail's links,
  // so it runs only when asked.
  function startChecks(m) {
    if (state.spam) runSpamCheck(m);
    // Mailpit's "automatic link checking", off unless the user turns it on.
    if (stored('mp-link-check-auto-scan') === 'true') runLinkCheck(m);
    if (m.HTML && state.htmlCheck !== false) runCheck(m, 'html', `/api/v1/message/${encodeURIComponent(m.ID)}/html-check`);
  }

  function runSpamCheck(m) {
    runCheck(m, 'spam', `/api/v1/message/${encodeURIComponent(m.ID)}/sa-check`);
  }

  function runLinkCheck(m) {
    const follow = stored('mp-link-check-follow-redirects') === 'true';
    runCheck(m, 'links', `/api/v1/message/${encodeURIComponent(m.ID)}/link-check${follow ? '?follow=true' : ''}`);
  }

  const CHECK_TAB = { links: 'links', spam: 'spam', html: 'htmlcheck' };

  async function runCheck(m, kind, path) {
    const c = { loading: true };
    state.checks[kind] = c;
    showCheck(kind);
    try {
      c.result = await api('GET', path);
    } catch (e) {
      c.error = e;
    }
    c.loading = false;
    // The user moved to another message, or ran the check again.
    if (state.message !== m || state.checks[kind] !== c) return;
    showCheck(kind);
  }

  // Puts a check's state on its tab's badge, and in the pane if shown.
  function showCheck(kind) {
    const c = state.checks[kind];
    if (kind === 'links') linkScore(c);
    else if (kind === 'spam') spamScore(c);
    else htmlScore(c);
    if (state.tab === CHECK_TAB[kind]) renderPane().catch(fail);
  }

  function linkScore(c) {
    if (c.loading) setScore('links-score', '', '');
    else if (c.error) setScore('links-score', '!', 'warn');
    else setScore('links-score', String(c.result.Errors || 0), c.result.Errors ? 'bad' : 'good');
  }

  function spamScore(c) {
    if (c.loading) setScore('spam-score', '', '');
    else if (c.error || c.result.Error) setScore('spam-score', '!', 'warn');
    else setScore('spam-score', String(c.result.Score), spamLevel(c.result));
  }

  // Mailpit's colours: spam red, 4 points or more amber, less green.
  function spamLevel(r) {
    if (r.IsSpam) return 'bad';
    return r.Score >= 4 ? 'warn' : 'good';
  }

  function htmlScore(c) {
    const tab = $('tab-htmlcheck');
    if (c.loading) {
      tab.hidden = state.htmlCheck !== true;
      setScore('htmlcheck-score', '', '');
      return;
    }
    if (c.error) {
      const off = c.error instanceof ApiError && /not enabled|disabled/i.test(c.error.text || '');
      if (off) state.htmlCheck = false;
      if (off || (c.error instanceof ApiError && c.error.status === 404)) {
        tab.hidden = true;
        if (state.tab === 'htmlcheck') selectTab('html');
        return;
      }
      tab.hidden = false;
      setScore('htmlcheck-score', '!', 'warn');
      return;
    }
    state.htmlCheck = true;
    tab.hidden = false;
    const t = c.result.Total || {};
    setScore('htmlcheck-score', `${Math.floor(t.Supported || 0)}%`, htmlLevel(t));
  }

  // Mailpit's colours, from both the unsupported and the partial share.
  function htmlLevel(t) {
    if (t.Unsupported < 5 && t.Partial < 10) return 'good';
    if (t.Unsupported < 10 && t.Partial < 15) return 'warn';
    return 'bad';
  }

  function checkFailed(text) {
    return el('div', { class: 'notice bad-text', role: 'alert' }, text);
  }

  // A URL from a message as a link, when it is an http(s) one; text otherwise.
  function urlNode(u) {
    return /^https?:\/\//i.test(u) ? el('a', { href: u, target: '_blank', rel: 'noopener noreferrer' }, u) : u;
  }

  function renderLinkCheck(pane, m) {
    const c = state.checks.links;
    const done = c && !c.loading;
    const follow = el('input', { type: 'checkbox', id: 'link-follow', checked: stored('mp-link-check-follow-redirects') === 'true' });
    follow.addEventListener('change', () => {
      store('mp-link-check-follow-redirects', follow.checked ? 'true' : null);
      // As in Mailpit: results on screen are redone with the new setting.
      if (done && c.result) runLinkCheck(m);
    });
    const auto = el('input', { type: 'checkbox', id: 'link-auto', checked: stored('mp-link-check-auto-scan') === 'true' });
    auto.addEventListener('change', () => {
      store('mp-link-check-auto-scan', auto.checked ? 'true' : null);
      if (auto.checked && !c) runLinkCheck(m);
    });
    let heading = 'Link check';
    if (done && c.result) {
      const n = (c.result.Links || []).length;
      heading = n ? `Scanned ${n} link${n === 1 ? '' : 's'}` : 'No links detected';
    }
    const out = [el('div', { class: 'check-bar' },
      el('h3', { id: 'link-heading' }, heading),
      el('button', { type: 'button', id: 'link-run', class: 'primary', disabled: c && c.loading, onclick: () => runLinkCheck(m) },
        c && c.loading ? 'Checking links…' : done ? 'Check again' : 'Check message links'),
      el('label', { class: 'small' }, follow, ' Follow HTTP redirects'),
      el('label', { class: 'small' }, auto, ' Check every message when it opens'),
    )];
    if (!done) {
      out.push(el('p', { class: 'muted check-intro' },
        'Link check finds the unique links of this message (text and HTML, images and stylesheets included) and ' +
        'requests each one from the server (HEAD) to test its status. Tracking and unsubscribe links are requested ' +
        'too, so run it on mail you know.'));
    } else if (c.error) {
      out.push(checkFailed(`Link check failed: ${errorText(c.error)}`));
    } else {
      for (const g of linkGroups(c.result.Links || [])) {
        const cls = g.code === 0 || g.code >= 400 ? 'bad' : g.code >= 300 ? 'redirect' : '';
        out.push(el('section', { class: 'status-group', 'data-status': String(g.code) },
          el('h4', { class: cls }, `Status ${g.code}`, g.status ? el('span', { class: 'muted small' }, ` (${g.status})`) : null),
          el('ul', null, ...g.urls.map((u) => el('li', null, urlNode(u)))),
        ));
      }
    }
    pane.setAttribute('aria-busy', c && c.loading ? 'true' : 'false');
    pane.replaceChildren(...out);
  }

  // Links grouped by status: failures first, then redirects, then the rest.
  function linkGroups(links) {
    const groups = new Map();
    for (const l of links) {
      let g = groups.get(l.StatusCode);
      if (!g) {
        g = { code: l.StatusCode, status: l.Status || (l.StatusCode === 0 ? 'Cannot connect to server' : ''), urls: [] };
        groups.set(l.StatusCode, g);
      }
      g.urls.push(l.URL);
    }
    const rank = (code) => (code === 0 || code >= 400 ? 0 : code >= 300 ? 1 : 2);
    return [...groups.values()].sort((a, b) => rank(a.code) - rank(b.code) || a.code - b.code);
  }

  function renderSpamCheck(pane) {
    const c = state.checks.spam;
    const out = [el('div', { class: 'check-bar' }, el('h3', null, 'Spam Analysis'))];
    if (!c || c.loading) {
      out.push(el('p', { class: 'muted' }, 'Asking SpamAssassin…'));
    } else if (c.error) {
      out.push(checkFailed(`Your message could not be checked: ${errorText(c.error)}`));
    } else if (c.result.Error) {
      out.push(checkFailed(`There was an error contacting the configured SpamAssassin server: ${c.result.Error}`));
    } else {
      const r = c.result;
      const level = spamLevel(r);
      out.push(el('div', { class: 'check-bar' },
        el('p', { class: `big-score ${level}-text`, id: 'spam-total' }, `${r.Score} / 5`),
        el('span', { class: `score ${level}`, id: 'spam-verdict' }, r.IsSpam ? 'Spam' : 'Not spam'),
      ));
      const table = el('table', { class: 'rules', id: 'spam-rules' },
        el('thead', null, el('tr', null, el('th', null, 'Score'), el('th', null, 'Rule'), el('th', null, 'Description'))));
      const body = el('tbody');
      for (const rule of r.Rules || []) {
        body.append(el('tr', null, el('td', null, String(rule.Score)), el('td', null, rule.Name), el('td', null, rule.Description)));
      }
      table.append(body);
      out.push(table);
    }
    pane.replaceChildren(...out);
  }

  // caniemail's descriptions and notes carry a little HTML: shown as text.
  // A DOMParser document is inert (no script runs, nothing loads).
  function plain(html) {
    return new DOMParser().parseFromString(String(html || ''), 'text/html').body.textContent;
  }

  const round2 = (v) => Math.round((v || 0) * 100) / 100;

  // A warning's weight in the ordering, as Mailpit's UI weighs it: by how
  // often it occurs among the message's nodes, pseudo-classes and at-rules
  // (whose use cannot be counted) at 5%.
  function warningWeight(w, nodes) {
    if (/^[:@]/.test(w.Title || '')) return 0.05;
    const found = (w.Score && w.Score.Found) || 0;
    return nodes && found < nodes ? found / nodes : 1;
  }

  function renderHTMLCheck(pane) {
    const c = state.checks.html;
    if (!c || c.loading) {
      pane.replaceChildren(el('p', { class: 'muted' }, 'Checking the HTML…'));
      return;
    }
    if (c.error) {
      pane.replaceChildren(checkFailed(`HTML check failed: ${errorText(c.error)}`));
      return;
    }
    const r = c.result;
    const t = r.Total || {};
    const out = [
      el('div', { class: 'check-bar' },
        el('p', { class: `big-score ${htmlLevel(t)}-text`, id: 'html-total' }, `${round2(t.Supported)}% supported`),
        el('span', { class: 'muted' }, `${round2(t.Partial)}% partially supported, ${round2(t.Unsupported)}% not supported`)),
      el('p', { class: 'muted small' }, `From ${t.Tests || 0} tests of HTML and CSS features against email-client support data from caniemail.com; the message has ${t.Nodes || 0} HTML nodes.`),
    ];
    const warnings = (r.Warnings || []).slice().sort((a, b) => {
      const score = (w) => ((w.Score.Unsupported || 0) + (w.Score.Partial || 0)) * warningWeight(w, t.Nodes);
      return score(b) - score(a);
    });
    out.push(el('h3', { id: 'html-warnings' }, `${warnings.length} warning${warnings.length === 1 ? '' : 's'}`));
    for (const w of warnings) {
      const sc = w.Score || {};
      const pct = (v) => `${Math.round(v || 0)}%`;
      const bar = el('span', {
        class: 'support',
        role: 'img',
        'aria-label': `${pct(sc.Supported)} supported, ${pct(sc.Partial)} partial, ${pct(sc.Unsupported)} not supported`,
        title: `${pct(sc.Supported)} supported, ${pct(sc.Partial)} partial, ${pct(sc.Unsupported)} not supported`,
      },
        el('span', { class: 'yes', style: `width:${sc.Supported || 0}%` }),
        el('span', { class: 'partial', style: `width:${sc.Partial || 0}%` }),
        el('span', { class: 'no', style: `width:${sc.Unsupported || 0}%` }));
      const clients = (w.Results || []).filter((x) => x.Support !== 'yes');
      const body = el('div', { class: 'body' });
      if (w.Description) body.append(el('p', null, plain(w.Description)));
      if (/^[:@]/.test(w.Title || '')) {
        body.append(el('p', { class: 'muted' }, `Found ${sc.Found} times in the CSS; whether it is used cannot be told, so it weighs less.`));
      }
      if (clients.length) {
        body.append(el('p', null, el('strong', null, 'Clients with partial or no support:')),
          el('ul', { class: 'clients' }, ...clients.map((x) => el('li', {
            class: x.Support === 'no' ? 'no' : 'partial',
            title: x.Support === 'no' ? 'Not supported' : 'Partially supported',
          }, x.Name, x.NoteNumber ? ` [${x.NoteNumber}]` : ''))));
      }
      const notes = Object.entries(w.NotesByNumber || {});
      if (notes.length) {
        body.append(el('p', null, el('strong', null, 'Notes:')),
          el('ul', { class: 'notes' }, ...notes.map(([n, text]) => el('li', null, `[${n}] ${plain(text)}`))));
      }
      if (w.URL && /^https?:\/\//i.test(w.URL)) {
        body.append(el('p', { class: 'small' }, el('a', { href: w.URL, target: '_blank', rel: 'noopener noreferrer' }, 'Online reference')));
      }
      out.push(el('details', { class: 'warning', 'data-slug': w.Slug || '' },
        el('summary', null,
          el('span', { class: 'title' }, w.Title || w.Slug || ''),
          el('span', { class: 'tag' }, w.Category || ''),
          el('span', { class: 'muted small', title: 'Times found' }, `× ${sc.Found || 0}`),
          bar),
        body));
    }
    pane.replaceChildren(...out);
  }

  // Plain text with http(s) links made clickable, as DOM nodes.
  function linkify(text) {
    const out = [];
    const re = /\bhttps?:\/\/[^\s<>"')\]]+/g;
    let last = 0;
    let mm;
    while ((mm = re.exec(text)) && out.length < 2000) {
      out.push(text.slice(last, mm.index));
      out.push(el('a', { href: mm[0], target: '_blank', rel: 'noopener noreferrer' }, mm[0]));
      last = mm.index + mm[0].length;
    }
    out.push(text.slice(last));
    return out;
  }

  function openRelative(delta) {
    const i = state.messages.findIndex((x) => x.ID === state.open);
    const j = i + delta;
    if (i < 0 || j < 0 || j >= state.messages.length) return;
    state.cursor = j;
    go(state.q, state.start, state.messages[j].ID, true);
  }

  function backToList() {
    go(state.q, state.start, null);
  }

  // ---------- live updates ----------

  function applyUpdate(d) {
    const m = state.messages.find((x) => x.ID === d.ID);
    if (m) {
      if (typeof d.Read === 'boolean') m.Read = d.Read;
      if (Array.isArray(d.Tags)) m.Tags = d.Tags;
      const li = $('messages').querySelector(`li[data-id="${CSS.escape(d.ID)}"]`);
      if (li) li.replaceWith(rowFor(m, state.messages.indexOf(m)));
    }
    if (state.message && state.message.ID === d.ID) {
      if (Array.isArray(d.Tags)) { state.message.Tags = d.Tags; renderMsgTags(); }
    }
  }

  let pendingNew = [];
  let newScheduled = false;
  let refreshTimer = 0;

  function onNew(summary) {
    notifyNew(summary);
    if (!state.statsSeen) {
      state.mailboxTotal++;
      if (!summary.Read) state.unread++;
    }
    if ((summary.Tags || []).length) refreshTagsSoon();
    if (state.q) {
      // Only the server knows whether it matches the search: ask again, once
      // per burst.
      clearTimeout(refreshTimer);
      refreshTimer = setTimeout(() => loadList().catch(fail), 150);
      renderCounts();
      return;
    }
    if (state.start > 0) {
      // Older pages shift by one; the user sees the new count and can go back.
      state.total++;
      renderCounts();
      return;
    }
    pendingNew.push(summary);
    if (!newScheduled) {
      newScheduled = true;
      // One DOM update per frame however fast mail arrives.
      requestAnimationFrame(flushNew);
    }
  }

  function flushNew() {
    newScheduled = false;
    const batch = pendingNew;
    pendingNew = [];
    const have = new Set(state.messages.map((m) => m.ID));
    const fresh = batch.filter((m) => !have.has(m.ID)).reverse();
    if (!fresh.length) { renderCounts(); return; }
    state.messages = [...fresh, ...state.messages].slice(0, PAGE);
    state.total += fresh.length;
    // Keep the keyboard cursor on the message it was on.
    state.cursor = Math.min(state.cursor + fresh.length, state.messages.length - 1);
    renderList();
  }

  function onEvent(ev) {
    const d = ev.Data;
    switch (ev.Type) {
      case 'new':
        if (d && d.ID) onNew(d);
        break;
      case 'stats':
        if (d) {
          state.statsSeen = true;
          if (typeof d.Total === 'number') state.mailboxTotal = d.Total;
          if (typeof d.Unread === 'number') state.unread = d.Unread;
          if (!state.q && typeof d.Total === 'number') state.total = d.Total;
          renderCounts();
        }
        break;
      case 'update':
        if (d && d.ID) {
          applyUpdate(d);
          if (Array.isArray(d.Tags)) refreshTagsSoon();
          if (!state.statsSeen && typeof d.Read === 'boolean') refreshCountsSoon();
        }
        break;
      case 'delete':
        if (d && d.ID) {
          if (removeLocal([d.ID])) renderList();
          if (state.open === d.ID) showGone();
          if (!state.statsSeen) refreshCountsSoon();
          refillSoon();
        }
        break;
      case 'prune':
      case 'truncate':
        state.selected.clear();
        if (state.open && ev.Type === 'truncate') showGone();
        loadList().catch(fail);
        refreshTagsSoon();
        if (!state.statsSeen) refreshCountsSoon();
        break;
      default:
        break;
    }
  }

  let countsTimer = 0;
  function refreshCountsSoon() {
    clearTimeout(countsTimer);
    countsTimer = setTimeout(refreshCounts, 200);
  }

  let refillTimer = 0;
  function refillSoon() {
    clearTimeout(refillTimer);
    refillTimer = setTimeout(() => loadList().catch(fail), 300);
  }

  let ws = null;
  let retry = 0;
  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const sock = new WebSocket(`${proto}//${location.host}${at('/api/events')}`);
    ws = sock;
    sock.onopen = () => {
      const wasDown = retry > 0;
      retry = 0;
      $('conn').classList.add('live');
      $('conn').title = 'Live updates: connected';
      // Events sent while we were away are lost: catch up once.
      if (wasDown) { loadList().catch(fail); refreshCounts(); }
    };
    sock.onmessage = (e) => {
      let ev;
      try { ev = JSON.parse(e.data); } catch (err) { return; }
      if (ev && typeof ev === 'object') onEvent(ev);
    };
    sock.onclose = () => {
      if (ws !== sock) return;
      $('conn').classList.remove('live');
      $('conn').title = 'Live updates: reconnecting…';
      // Back off 250 ms, 500 ms, 1 s … up to 5 s, so a restarting server is
      // found again quickly without a reconnect storm.
      const delay = Math.min(5000, 250 * 2 ** retry);
      retry++;
      setTimeout(connect, delay);
    };
    sock.onerror = () => { /* onclose follows and reconnects */ };
  }

  // ---------- wiring ----------

  function bind() {
    $('search').addEventListener('submit', (e) => {
      e.preventDefault();
      const q = $('q').value.trim();
      state.selected.clear();
      go(q, 0, null);
      $('q').blur();
    });
    $('q').addEventListener('input', () => { $('q-clear').hidden = !$('q').value; });
    $('q-clear').addEventListener('click', () => { $('q').value = ''; go('', 0, null); });
    $('home').addEventListener('click', (e) => { e.preventDefault(); state.selected.clear(); go('', 0, null); });
    for (const a of document.querySelectorAll('.nav-item')) {
      a.addEventListener('click', (e) => { e.preventDefault(); state.selected.clear(); go(a.dataset.q || '', 0, null); });
    }
    $('menu').addEventListener('click', () => document.body.classList.toggle('side-open'));
    $('select-all').addEventListener('change', (e) => {
      for (const m of state.messages) toggleSelect(m.ID, e.target.checked);
    });
    $('btn-read').addEventListener('click', () => setRead(state.selected.size ? [...state.selected] : null, true).catch(fail));
    $('btn-unread').addEventListener('click', () => setRead([...state.selected], false).catch(fail));
    $('btn-delete').addEventListener('click', () => deleteIDs([...state.selected]).catch(fail));
    $('btn-delete-all').addEventListener('click', () => deleteAll().catch(fail));
    $('bulk-tag').addEventListener('keydown', (e) => {
      if (e.key !== 'Enter') return;
      const t = e.target.value.trim();
      if (!t) return;
      e.target.value = '';
      addTagToIDs([...state.selected], t).catch(fail);
    });
    $('prev').addEventListener('click', () => go(state.q, Math.max(0, state.start - PAGE), null));
    $('next').addEventListener('click', () => go(state.q, state.start + PAGE, null));
    $('back').addEventListener('click', backToList);
    $('msg-unread').addEventListener('click', () => {
      if (!state.message) return;
      setRead([state.message.ID], false).then(backToList).catch(fail);
    });
    $('msg-delete').addEventListener('click', () => deleteOpen().catch(fail));
    $('msg-newer').addEventListener('click', () => openRelative(-1));
    $('msg-older').addEventListener('click', () => openRelative(1));
    for (const b of document.querySelectorAll('.tabs [role=tab]')) {
      b.addEventListener('click', () => selectTab(b.dataset.tab));
    }
    document.querySelector('.tablist').addEventListener('keydown', onTabKey);
    for (const b of document.querySelectorAll('#widths button')) {
      b.addEventListener('click', () => setWidth(b.dataset.width));
    }
    setWidth(state.width);
    $('settings-btn').addEventListener('click', openSettings);
    for (const r of document.querySelectorAll('input[name=theme]')) {
      r.addEventListener('change', () => { if (r.checked) setTheme(r.value); });
    }
    $('notify').addEventListener('change', (e) => setNotify(e.target.checked).catch(fail));
    $('chaos-save').addEventListener('click', () => saveChaos().catch(fail));
    // Enter in a trigger saves it, rather than submitting (closing) the dialog.
    $('chaos').addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && e.target.tagName === 'INPUT') { e.preventDefault(); saveChaos().catch(fail); }
    });
    $('remote').addEventListener('change', (e) => { state.remote = e.target.checked; renderPane().catch(fail); });
    if (BLOCK_REMOTE_CSS) {
      $('remote-label').textContent = 'Load remote images';
      $('remote-note').textContent = 'Remote images are blocked to protect your privacy; this server never loads remote stylesheets or fonts.';
    }
    $('msg-tag-input').addEventListener('keydown', (e) => {
      if (e.key !== 'Enter' || !state.message) return;
      const t = e.target.value.trim();
      if (!t) return;
      e.target.value = '';
      const cur = state.message.Tags || [];
      if (!cur.includes(t)) setTags(state.message.ID, [...cur, t]).catch(fail);
    });
    $('msg-release').addEventListener('click', openRelease);
    $('release-form').addEventListener('submit', (e) => { e.preventDefault(); sendRelease().catch(fail); });
    $('release-cancel').addEventListener('click', () => $('release').close());
    $('help-link').addEventListener('click', (e) => { e.preventDefault(); $('help').showModal(); });
    window.addEventListener('popstate', () => route().catch(fail));
    document.addEventListener('keydown', onKey);
  }

  // ---------- settings: preview width, theme, notifications ----------

  // The HTML preview's width (Mailpit's sizes; CSS .preview-box), kept
  // across reloads.
  function setWidth(w) {
    state.width = w;
    store('mailsafe-preview-width', w === 'desktop' ? null : w);
    for (const b of document.querySelectorAll('#widths button')) {
      b.setAttribute('aria-pressed', b.dataset.width === w ? 'true' : 'false');
    }
    const box = $('preview-box');
    if (box) box.className = `preview-box ${w}`;
  }

  function openSettings() {
    const theme = document.documentElement.dataset.theme || 'auto';
    $(`theme-${theme}`).checked = true;
    renderNotify();
    $('chaos').hidden = !state.chaos;
    if (state.chaos) loadChaos().catch((e) => { $('chaos-note').textContent = errorText(e); });
    $('settings').showModal();
  }

  // Chaos (MP_ENABLE_CHAOS): the triggers as /api/v1/chaos has them.
  const CHAOS = ['Sender', 'Recipient', 'Authentication'];
  async function loadChaos() {
    $('chaos-note').textContent = '';
    showChaos(await api('GET', '/api/v1/chaos'));
  }

  function showChaos(t) {
    for (const k of CHAOS) {
      $(`chaos-${k}-code`).value = t[k] ? t[k].ErrorCode : '';
      $(`chaos-${k}-prob`).value = t[k] ? t[k].Probability : '';
    }
  }

  // Sends every trigger (the server takes them all at once, as Mailpit's);
  // its refusal of a bad value is shown as it words it.
  async function saveChaos() {
    const body = {};
    for (const k of CHAOS) {
      body[k] = { ErrorCode: Number($(`chaos-${k}-code`).value), Probability: Number($(`chaos-${k}-prob`).value) };
    }
    try {
      showChaos(await api('PUT', '/api/v1/chaos', body));
      $('chaos-note').textContent = 'Updated';
    } catch (e) {
      $('chaos-note').textContent = errorText(e);
    }
  }

  // light, dark or auto (prefers-color-scheme); theme.js applies the stored
  // one before the first paint. Mailpit's key, Mailpit's values.
  function setTheme(theme) {
    if (theme === 'light' || theme === 'dark') {
      document.documentElement.dataset.theme = theme;
      store('mp-theme', theme);
    } else {
      delete document.documentElement.dataset.theme;
      store('mp-theme', null);
    }
  }

  // Browser notifications for new mail are opt-in: nothing touches the
  // Notification API until the user turns them on here (which asks the
  // browser's permission); the choice is kept in this browser.
  const notifySupported = () => window.isSecureContext && 'Notification' in window;
  const notifyWanted = () => stored('mailsafe-notify') === 'on';
  let notifyPaused = false;

  function renderNotify() {
    const box = $('notify');
    const note = $('notify-note');
    note.hidden = true;
    if (!notifySupported()) {
      box.checked = false;
      box.disabled = true;
      note.textContent = 'This browser cannot show notifications for this page (they need HTTPS or localhost).';
      note.hidden = false;
      return;
    }
    box.disabled = false;
    box.checked = notifyWanted() && Notification.permission === 'granted';
    if (notifyWanted() && Notification.permission === 'denied') {
      note.textContent = 'Notifications are blocked in the browser\'s site settings.';
      note.hidden = false;
    }
  }

  async function setNotify(on) {
    if (!on) {
      store('mailsafe-notify', null);
      renderNotify();
      return;
    }
    if (!notifySupported()) { renderNotify(); return; }
    const permission = await Notification.requestPermission();
    store('mailsafe-notify', 'on');
    renderNotify();
    if (permission !== 'granted') {
      $('notify-note').textContent = 'The browser did not allow notifications for this page.';
      $('notify-note').hidden = false;
    }
  }

  // One notification per burst of mail (then none for 2 s), as Mailpit.
  function notifyNew(m) {
    if (notifyPaused || !notifyWanted() || !notifySupported() || Notification.permission !== 'granted') return;
    notifyPaused = true;
    setTimeout(() => { notifyPaused = false; }, 2000);
    const from = m.From && m.From.Address ? m.From.Address : '[unknown]';
    const n = new Notification(`New mail from: ${from}`, {
      body: String(m.Subject || '').slice(0, 100),
      icon: at('/ui/favicon.svg'),
      tag: 'mailsafe-new',
    });
    n.onclick = () => {
      window.focus();
      go(state.q, state.start, m.ID);
      n.close();
    };
  }

  // ---------- release (relay the open message on) ----------

  // Opens the release dialog for the open message, its recipients filled in
  // (To, Cc and Bcc, as Mailpit's dialog does); the relay server's own
  // rules are shown so a refusal is no surprise.
  function openRelease() {
    const m = state.message;
    if (!m || !state.relay) return;
    const r = state.relay;
    const addrs = [...(m.To || []), ...(m.Cc || []), ...(m.Bcc || [])].map((a) => a.Address).filter(Boolean);
    $('release-to').value = [...new Set(addrs)].join(', ');
    $('release-server').textContent = r.SMTPServer || 'the relay server';
    $('release-ids').hidden = !!r.PreserveMessageIDs;
    $('release-return').textContent = r.ReturnPath ? `, Return-Path <${r.ReturnPath}>` : '';
    const rules = [];
    if (r.AllowedRecipients) rules.push(`Only recipients matching ${r.AllowedRecipients} are allowed.`);
    if (r.BlockedRecipients) rules.push(`Recipients matching ${r.BlockedRecipients} are blocked.`);
    if (r.OverrideFrom) rules.push(`From is replaced by ${r.OverrideFrom}.`);
    $('release-rules').textContent = rules.join(' ');
    $('release-rules').hidden = !rules.length;
    $('release-error').hidden = true;
    $('release-send').disabled = false;
    $('release').showModal();
    $('release-to').focus();
  }

  // Sends the release; the dialog stays open with the server's answer when
  // it fails (a refused recipient, the relay server down), so the user can
  // correct the list. The stored message is never changed.
  async function sendRelease() {
    const m = state.message;
    const to = $('release-to').value.split(',').map((a) => a.trim()).filter(Boolean);
    if (!m || !to.length) return;
    $('release-send').disabled = true;
    $('release-error').hidden = true;
    try {
      await api('POST', `/api/v1/message/${encodeURIComponent(m.ID)}/release`, { To: to });
      $('release').close();
      toast(`Released to ${to.length} recipient${to.length === 1 ? '' : 's'}`);
    } catch (e) {
      $('release-error').textContent = e.message.replace(/^POST \S+: /, '');
      $('release-error').hidden = false;
    } finally {
      $('release-send').disabled = false;
    }
  }

  async function deleteOpen() {
    const id = state.open;
    if (!id) return;
    const i = state.messages.findIndex((x) => x.ID === id);
    await api('DELETE', '/api/v1/messages', { IDs: [id] });
    removeLocal([id]);
    // Go on to the next message, as mail clients do; back to the list at the end.
    const next = state.messages[Math.min(i, state.messages.length - 1)];
    if (i >= 0 && next) go(state.q, state.start, next.ID, true);
    else go(state.q, state.start, null, true);
  }

  function onKey(e) {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const t = e.target;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'TEXTAREA' || t.isContentEditable)) {
      if (e.key === 'Escape') t.blur();
      return;
    }
    if ($('help').open || $('release').open || $('settings').open) return;
    const inMessage = !$('message-view').hidden;
    const k = e.key;
    let handled = true;
    if (k === '/') { $('q').focus(); $('q').select(); }
    else if (k === '?') $('help').showModal();
    else if (inMessage) {
      if (k === 'j') openRelative(1);
      else if (k === 'k') openRelative(-1);
      else if (k === 'Escape' || k === 'Backspace') backToList();
      else if (k === 'Delete' || k === '#') deleteOpen().catch(fail);
      else if (k === 'u' && state.message) setRead([state.message.ID], false).then(backToList).catch(fail);
      else if (k === '1') selectTab('html');
      else if (k === '2') selectTab('text');
      else if (k === '3') selectTab('headers');
      else if (k === '4') selectTab('raw');
      else handled = false;
    } else {
      const cur = state.messages[state.cursor];
      if (k === 'j' || k === 'ArrowDown') moveCursor(1);
      else if (k === 'k' || k === 'ArrowUp') moveCursor(-1);
      else if ((k === 'Enter' || k === 'o') && cur) go(state.q, state.start, cur.ID);
      else if (k === 'x' && cur) toggleSelect(cur.ID);
      else if (k === 'X') { const on = state.selected.size !== state.messages.length; for (const m of state.messages) toggleSelect(m.ID, on); }
      else if (k === 'Delete' || k === '#') deleteIDs(targetIDs()).catch(fail);
      else if (k === 'r') setRead(targetIDs(), true).catch(fail);
      else if (k === 'u') setRead(targetIDs(), false).catch(fail);
      else if (k === 'n' && !$('next').disabled) $('next').click();
      else if (k === 'p' && !$('prev').disabled) $('prev').click();
      else if (k === 'Escape') { if (state.selected.size) { for (const id of [...state.selected]) toggleSelect(id, false); } else if (state.q) go('', 0, null); else handled = false; }
      else handled = false;
    }
    if (handled) e.preventDefault();
  }

  // Server-side UI settings (Mailpit's /api/v1/webui): a label, whether
  // "Delete all" is hidden, the relay server (the Release button), whether
  // spamd is there (the Spam Analysis tab) and whether chaos is on (its
  // triggers in Settings). Optional: the UI works the same without them.
  async function loadSettings() {
    try {
      const w = await api('GET', '/api/v1/webui');
      if (w && w.Label) {
        state.label = String(w.Label);
        $('label').textContent = state.label;
        $('label').hidden = false;
        updateTitle();
      }
      if (w && w.HideDeleteAllButton) $('btn-delete-all').hidden = true;
      if (w && w.MessageRelay && w.MessageRelay.Enabled) {
        state.relay = w.MessageRelay;
        if (state.message) $('msg-release').hidden = false;
      }
      if (w && w.ChaosEnabled) state.chaos = true;
      if (w && w.SpamAssassin) {
        state.spam = true;
        // A message opened before the settings arrived gets its check now.
        if (state.message) {
          $('tab-spam').hidden = false;
          if (!state.checks.spam) runSpamCheck(state.message);
        }
      }
    } catch (e) { /* older servers: defaults */ }
  }

  bind();
  route().catch(fail);
  connect();
  loadSettings();
})();
