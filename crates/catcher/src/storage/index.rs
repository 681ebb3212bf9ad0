//! The word-level search index and its vocabulary.
//!
//! Mailpit's search is a case-insensitive substring match over cleaned text
//! (see [`super::search::clean`]). A trigram index answers that, but costs
//! about one index entry per character on every insert and still has to
//! verify each candidate against the text, which is seconds when a term
//! occurs in every message. Instead every cleaned text is turned into a
//! stream of tokens that loses nothing:
//!
//! - a run of word characters (ASCII letters and digits, and any non-ASCII
//!   character) is one token;
//! - every other printable ASCII character is a token of its own (`@`, `.`);
//!   control characters become `_xx` (hex);
//! - a space between two word tokens is implied by their adjacency (the
//!   cleaned text has single spaces, and two word runs can only be next to
//!   each other if something separated them); any other space becomes the
//!   token `__`.
//!
//! Real symbol tokens are one character long and word tokens contain no `_`,
//! so `__` and `_xx` never collide with text. The encoding is injective, so a
//! term `T` is a substring of a text `D` exactly when `T`'s token stream
//! occurs in `D`'s with the first token allowed to be a *suffix* of a word
//! token and the last a *prefix* (a single word token: anywhere inside a
//! word). FTS5 (`detail=full`) answers the phrase and the prefix; the suffix
//! and infix cases are expanded into the words that contain them using the
//! vocabulary, which is kept in memory (and persisted in `{p}vocab`). Only
//! when an expansion is too wide (one- or two-letter fragments) does the
//! search fall back to scanning the stored text with `LIKE`, as Mailpit
//! always does.

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use rusqlite::{Connection, params};

use super::error::StorageError;

/// The FTS5 tokenizer: ASCII folding (the text is already lower case), with
/// every printable symbol a token character, since the encoder has already
/// split symbols into single-character tokens separated by spaces. `"`, `(`,
/// `)`, `,`, `;`, `<` and `>` never reach the index (cleaning turns them into
/// spaces).
pub const TOKENIZE: &str = "ascii tokenchars ''!#$%&''''*+-./:=?@[\\]^_`{|}~''";

/// One token of the encoded stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tok {
    /// A run of word characters.
    Word(String),
    /// A symbol or control character, already encoded (`@`, `_0a`).
    Sym(String),
    /// A space that is not between two words (`__`).
    Space,
}

impl Tok {
    /// The token as the index stores it.
    pub fn text(&self) -> &str {
        match self {
            Tok::Word(w) | Tok::Sym(w) => w,
            Tok::Space => "__",
        }
    }
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || !c.is_ascii()
}

/// One token of the encoded stream, borrowed: a word is a slice of the
/// cleaned text, a symbol its encoded form.
enum TokRef<'a, 'b> {
    Word(&'a str),
    Sym(&'b str),
    Space,
}

/// Calls `f` with each token of cleaned text (see the module doc), without
/// allocating: message preparation splits every message's texts, and one
/// `String` per token was most of its cost (~8% of the SMTP sessions' CPU in
/// the ingest benchmark).
fn each_token<'a>(cleaned: &'a str, mut f: impl for<'b> FnMut(TokRef<'a, 'b>)) {
    // Whether a token was emitted yet, and whether the last one was a word.
    let mut last_is_word: Option<bool> = None;
    // A space seen since the last token: implied between two words,
    // dropped at the start, `__` otherwise.
    let mut space = false;
    let spelled = |last: Option<bool>, next_is_word: bool| {
        !(last.is_none() || last == Some(true) && next_is_word)
    };
    let mut word_start: Option<usize> = None;
    let mut hex = String::with_capacity(3);
    for (i, c) in cleaned.char_indices() {
        if is_word_char(c) {
            if word_start.is_none() {
                if space && spelled(last_is_word, true) {
                    f(TokRef::Space);
                }
                space = false;
                word_start = Some(i);
            }
            continue;
        }
        if let Some(start) = word_start.take() {
            f(TokRef::Word(&cleaned[start..i]));
            last_is_word = Some(true);
        }
        if c == ' ' {
            space = true;
            continue;
        }
        if space && spelled(last_is_word, false) {
            f(TokRef::Space);
        }
        space = false;
        if c.is_ascii_graphic() {
            f(TokRef::Sym(&cleaned[i..i + 1]));
        } else {
            use std::fmt::Write;
            hex.clear();
            let _ = write!(hex, "_{:02x}", c as u32 & 0xff);
            f(TokRef::Sym(&hex));
        }
        last_is_word = Some(false);
    }
    if let Some(start) = word_start {
        f(TokRef::Word(&cleaned[start..]));
    }
}

impl TokRef<'_, '_> {
    fn text(&self) -> &str {
        match self {
            TokRef::Word(w) => w,
            TokRef::Sym(s) => s,
            TokRef::Space => "__",
        }
    }
}

/// Splits cleaned text into its token stream (see the module doc).
pub fn tokens(cleaned: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    each_token(cleaned, |t| {
        out.push(match t {
            TokRef::Word(w) => Tok::Word(w.to_string()),
            TokRef::Sym(s) => Tok::Sym(s.to_string()),
            TokRef::Space => Tok::Space,
        })
    });
    out
}

/// The text FTS5 indexes for `cleaned`: its tokens separated by spaces.
#[cfg(test)]
fn encode(cleaned: &str) -> String {
    let toks = tokens(cleaned);
    let mut s = String::with_capacity(cleaned.len() + cleaned.len() / 4);
    for t in &toks {
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(t.text());
    }
    s
}

/// Every distinct word token ever indexed for this tenant. Words of deleted
/// messages stay: a word no message holds only widens an expansion by a term
/// that matches nothing, so results stay exact.
///
/// A catcher restored from a backup must answer `/readyz` in well under a
/// second, and a large mailbox can hold millions of distinct words (every
/// random token of every message), which take seconds to read. So
/// [`Store::open`](super::Store::open) reads them in the background
/// ([`Vocab::load_in_background`]): SMTP and the API serve at once, and only
/// a search that expands a fragment waits until every word is known, because
/// an expansion over a partial vocabulary would silently miss matches.
#[derive(Debug, Default)]
pub struct Vocab {
    inner: RwLock<VocabInner>,
    loading: Mutex<Load>,
    loaded: Condvar,
}

/// Whether the persisted words are all in memory.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Load {
    /// Every persisted word is in memory (or there were none to read).
    #[default]
    Done,
    /// A background reader is still adding them.
    Running,
    /// Reading them failed: expansions are refused, so searches scan.
    Failed,
}

/// Words a background load adds per write lock, so the writer's lookups
/// wait for one batch at most.
const LOAD_BATCH: usize = 8192;

/// The words as a set (for inserts) and as one `\n`-separated string
/// (starting and ending with `\n`), so an expansion is a single `memmem`
/// pass instead of a substring search per word.
#[derive(Debug)]
struct VocabInner {
    set: HashSet<Box<str>>,
    blob: String,
    /// Bumped by [`Vocab::clear`]: a background load that started before the
    /// mailbox was emptied must not bring its words back.
    generation: u64,
}

impl Default for VocabInner {
    fn default() -> Self {
        VocabInner {
            set: HashSet::new(),
            blob: "\n".to_string(),
            generation: 0,
        }
    }
}

impl VocabInner {
    fn add(&mut self, w: String) {
        if w.is_empty() || w.contains('\n') || self.set.contains(w.as_str()) {
            return;
        }
        self.blob.push_str(&w);
        self.blob.push('\n');
        self.set.insert(w.into());
    }
}

/// Which words an expansion looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Words containing the fragment.
    Contains,
    /// Words ending with it.
    Suffix,
    /// Words starting with it.
    Prefix,
}

impl Vocab {
    /// Loads the persisted vocabulary of a tenant before returning.
    #[cfg(test)]
    pub fn load(conn: &Connection, pre: &str) -> Result<Vocab, StorageError> {
        let v = Vocab::default();
        v.read_all(conn, pre, v.generation())?;
        Ok(v)
    }

    /// Starts reading the persisted vocabulary of a tenant on a thread of its
    /// own, over `conn` (a connection of its own, so the read transaction
    /// sees one committed state). Words the writer commits meanwhile reach
    /// the vocabulary through [`Vocab::extend`] as usual; a word it looks up
    /// before the load has reached it is merely inserted again (`INSERT OR
    /// IGNORE`), so nothing is lost either way.
    pub fn load_in_background(
        self: &Arc<Self>,
        conn: Connection,
        pre: &str,
    ) -> Result<(), StorageError> {
        *self.loading.lock().unwrap_or_else(|e| e.into_inner()) = Load::Running;
        let generation = self.generation();
        let vocab = Arc::clone(self);
        let pre = pre.to_owned();
        let spawned = std::thread::Builder::new()
            .name("mailsafe-vocab-load".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                let outcome = vocab.read_all(&conn, &pre, generation);
                let state = match outcome {
                    Ok(n) => {
                        tracing::debug!(words = n, seconds = started.elapsed().as_secs_f64(), "search vocabulary loaded");
                        Load::Done
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the search vocabulary failed; searches for parts of words will scan");
                        Load::Failed
                    }
                };
                *vocab.loading.lock().unwrap_or_else(|e| e.into_inner()) = state;
                vocab.loaded.notify_all();
            });
        if let Err(e) = spawned {
            *self.loading.lock().unwrap_or_else(|e| e.into_inner()) = Load::Done;
            return Err(StorageError::Codec(e));
        }
        Ok(())
    }

    fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Adds every word of the tenant's `{pre}vocab` table, a batch per write
    /// lock, unless the vocabulary was cleared since `generation`; returns
    /// how many were read.
    fn read_all(&self, conn: &Connection, pre: &str, generation: u64) -> rusqlite::Result<usize> {
        let mut st = conn.prepare(&format!("SELECT term FROM {pre}vocab"))?;
        let mut rows = st.query([])?;
        let mut batch: Vec<String> = Vec::with_capacity(LOAD_BATCH);
        let mut n = 0;
        loop {
            let row = rows.next()?;
            if let Some(r) = row {
                batch.push(r.get(0)?);
                n += 1;
            }
            if batch.len() == LOAD_BATCH || (row.is_none() && !batch.is_empty()) {
                let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
                if g.generation != generation {
                    // The mailbox was emptied while we read: the words we
                    // still hold belong to messages that are gone.
                    return Ok(n);
                }
                for w in batch.drain(..) {
                    g.add(w);
                }
            }
            if row.is_none() {
                return Ok(n);
            }
        }
    }

    /// Blocks until a background load has finished; false if it failed.
    fn wait_loaded(&self) -> bool {
        let mut state = self.loading.lock().unwrap_or_else(|e| e.into_inner());
        while *state == Load::Running {
            state = self.loaded.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        *state == Load::Done
    }

    /// Whether `w` is known.
    pub fn contains(&self, w: &str) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .set
            .contains(w)
    }

    /// Adds words (after the transaction that indexed them has committed, so
    /// a rolled-back batch never leaves a word the table lacks).
    pub fn extend(&self, words: impl IntoIterator<Item = String>) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        for w in words {
            g.add(w);
        }
    }

    /// Forgets every word (the mailbox was emptied).
    pub fn clear(&self) {
        let mut g = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let generation = g.generation + 1;
        *g = VocabInner {
            generation,
            ..VocabInner::default()
        };
    }

    /// The words that fit `frag`, or `None` when more than `max` do (the
    /// caller then scans instead of building a huge OR) or when the persisted
    /// words could not be read. Waits for a background load to finish.
    pub fn expand(&self, frag: &str, fit: Fit, max: usize) -> Option<Vec<String>> {
        if frag.is_empty() || frag.contains('\n') {
            return Some(Vec::new());
        }
        if !self.wait_loaded() {
            return None;
        }
        let g = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let blob = g.blob.as_bytes();
        let needle = match fit {
            Fit::Contains => frag.to_string(),
            Fit::Suffix => format!("{frag}\n"),
            Fit::Prefix => format!("\n{frag}"),
        };
        let mut out: Vec<String> = Vec::new();
        let mut last_start = usize::MAX;
        for pos in memchr::memmem::find_iter(blob, needle.as_bytes()) {
            // The word around the hit: from after the previous `\n` to the
            // next one (the prefix needle starts at the `\n` itself).
            let at = if fit == Fit::Prefix { pos + 1 } else { pos };
            let start = memchr::memrchr(b'\n', &blob[..at]).map_or(0, |i| i + 1);
            if start == last_start {
                continue; // a second hit inside the same word
            }
            last_start = start;
            let end = memchr::memchr(b'\n', &blob[at..]).map_or(blob.len(), |i| at + i);
            if out.len() == max {
                return None;
            }
            out.push(g.blob[start..end].to_string());
        }
        Some(out)
    }
}

/// The search texts of one message, cleaned and encoded ahead of time so
/// the writer thread only inserts them.
pub struct Prepped {
    /// Cleaned Subject, From, To, Cc, Bcc, Reply-To and Message-ID; the
    /// eighth, everything (what plain terms search), is only kept
    /// compressed, as `body_zst`, and left empty here.
    cols: [String; 8],
    /// The same, encoded for FTS5.
    enc: [String; 8],
    /// Distinct word tokens.
    words: Vec<String>,
    /// `cols[7]` compressed with zstd, for `{p}search_text.BodyZst`.
    body_zst: Vec<u8>,
}

/// zstd level for the stored search text: zstd's own default. It runs where
/// the message is parsed, off the writer thread, and only the rare `LIKE`
/// fallback reads the text back.
const BODY_LEVEL: i32 = 3;

/// The SQL function that gives a `{p}search_text` row's everything-text:
/// `search_body(Body, BodyZst)` (see [`register_functions`]).
pub const SEARCH_BODY_SQL: &str = "search_body(st.Body, st.BodyZst)";

/// Registers `search_body(Body, BodyZst)` on a connection: the plain `Body`
/// of a row written before schema 1.3.0 (`BodyZst` NULL), else `BodyZst`
/// decompressed. Every connection of the store gets it, so any of them can
/// run the `LIKE` fallback.
pub fn register_functions(conn: &Connection) -> rusqlite::Result<()> {
    use rusqlite::functions::FunctionFlags;
    conn.create_scalar_function(
        "search_body",
        2,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            use rusqlite::types::ValueRef;
            match ctx.get_raw(1) {
                ValueRef::Blob(z) => {
                    let raw = zstd::stream::decode_all(z)
                        .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))?;
                    String::from_utf8(raw)
                        .map_err(|e| rusqlite::Error::UserFunctionError(Box::new(e)))
                }
                _ => ctx.get::<String>(0),
            }
        },
    )
}

/// Encodes cleaned column texts and collects their distinct words.
pub fn prepare(mut cols: [String; 8]) -> Prepped {
    let mut enc: [String; 8] = Default::default();
    let mut words: HashSet<&str> = HashSet::new();
    for (i, c) in cols.iter().enumerate() {
        let s = &mut enc[i];
        s.reserve(c.len() + c.len() / 4);
        each_token(c, |tk| {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(tk.text());
            if let TokRef::Word(w) = tk {
                words.insert(w);
            }
        });
    }
    let words: Vec<String> = words.into_iter().map(str::to_owned).collect();
    // Compressing bytes in memory into a Vec cannot fail.
    let all = std::mem::take(&mut cols[7]);
    let body_zst = super::model::compress(all.as_bytes(), BODY_LEVEL).unwrap_or_default();
    Prepped {
        cols,
        enc,
        words,
        body_zst,
    }
}

/// Words first seen in the current batch, in order, so a job that rolls
/// back to its savepoint can forget exactly the words it added.
#[derive(Debug, Default)]
pub struct Fresh {
    set: HashSet<String>,
    list: Vec<String>,
}

impl Fresh {
    fn contains(&self, w: &str) -> bool {
        self.set.contains(w)
    }

    fn insert(&mut self, w: &str) {
        self.set.insert(w.to_string());
        self.list.push(w.to_string());
    }

    /// A point to roll back to.
    pub fn mark(&self) -> usize {
        self.list.len()
    }

    /// Forgets the words added since `mark`.
    pub fn truncate(&mut self, mark: usize) {
        for w in self.list.drain(mark.min(self.list.len())..) {
            self.set.remove(&w);
        }
    }

    /// Takes every word, leaving this empty.
    pub fn take(&mut self) -> Vec<String> {
        self.set.clear();
        std::mem::take(&mut self.list)
    }
}

/// Stores the cleaned text of one message (for `LIKE` fallbacks); its words
/// are indexed by [`index_words`], once per batch (see the writer).
///
/// The everything-text goes in compressed (`BodyZst`, `Body` left empty):
/// stored plain it was most of the pages a commit wrote. With Postfix's
/// `smtp-source -l 4096` it took 564 of the db's ~700 pages at 500 messages
/// (two pages a message, while the compressed raw message took 26 in all).
pub fn store_text(
    conn: &Connection,
    pre: &str,
    rowid: i64,
    p: &Prepped,
) -> Result<(), StorageError> {
    let c = &p.cols;
    conn.prepare_cached(&format!(
        "INSERT INTO {pre}search_text (id, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body, BodyZst) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, '', ?9)"
    ))?
    .execute(params![rowid, c[0], c[1], c[2], c[3], c[4], c[5], c[6], p.body_zst])?;
    Ok(())
}

/// Indexes the encoded tokens of one message in FTS5 and records words not
/// seen before in `{p}vocab` and in `fresh` (the caller adds `fresh` to the
/// in-memory vocabulary once the transaction commits).
pub fn index_words(
    conn: &Connection,
    pre: &str,
    rowid: i64,
    p: &Prepped,
    vocab: &Vocab,
    fresh: &mut Fresh,
) -> Result<(), StorageError> {
    let enc = &p.enc;
    conn.prepare_cached(&format!(
        "INSERT INTO {pre}fields (rowid, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        rowid, enc[0], enc[1], enc[2], enc[3], enc[4], enc[5], enc[6]
    ])?;
    conn.prepare_cached(&format!(
        "INSERT INTO {pre}words (rowid, Body) VALUES (?1, ?2)"
    ))?
    .execute(params![rowid, enc[7]])?;
    for w in &p.words {
        if !fresh.contains(w) && !vocab.contains(w) {
            conn.prepare_cached(&format!(
                "INSERT OR IGNORE INTO {pre}vocab (term) VALUES (?1)"
            ))?
            .execute(params![w])?;
            fresh.insert(w);
        }
    }
    Ok(())
}

/// Builds the FTS5 index and vocabulary from `{p}search_text` (used when an
/// older schema is upgraded to 1.2.0, before `BodyZst` exists: every row's
/// `Body` is plain text then).
pub fn rebuild(conn: &Connection, pre: &str) -> Result<(), StorageError> {
    let vocab = Vocab::default();
    let mut fresh = Fresh::default();
    let mut st = conn.prepare(&format!(
        "SELECT id, Subject, FromText, ToText, CcText, BccText, ReplyToText, MessageID, Body \
         FROM {pre}search_text"
    ))?;
    let mut rows = st.query([])?;
    while let Some(r) = rows.next()? {
        let mut cols: [String; 8] = Default::default();
        for (i, c) in cols.iter_mut().enumerate() {
            *c = r.get(i + 1)?;
        }
        index_words(conn, pre, r.get(0)?, &prepare(cols), &vocab, &mut fresh)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A db whose `vocab` table holds `n` words `w0000000w` .. and one
    /// `needleword`, and a connection to it for the loader.
    fn vocab_db(dir: &std::path::Path, n: usize) -> Connection {
        let path = dir.join("v.db");
        let mut conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE vocab (term TEXT PRIMARY KEY) WITHOUT ROWID")
            .unwrap();
        let tx = conn.transaction().unwrap();
        {
            let mut st = tx.prepare("INSERT INTO vocab (term) VALUES (?1)").unwrap();
            for i in 0..n {
                st.execute([format!("w{i:07}w")]).unwrap();
            }
            st.execute(["needleword"]).unwrap();
        }
        tx.commit().unwrap();
        drop(conn);
        Connection::open(&path).unwrap()
    }

    #[test]
    fn expansion_waits_for_the_background_load() {
        // Enough words that the load is still running when we ask (a partial
        // vocabulary would answer with fewer words, or none).
        let dir = tempfile::tempdir().unwrap();
        let conn = vocab_db(dir.path(), 300_000);
        let v = Arc::new(Vocab::default());
        v.load_in_background(conn, "").unwrap();
        assert_eq!(
            v.expand("dleword", Fit::Contains, 10),
            Some(vec!["needleword".to_string()])
        );
        assert_eq!(v.expand("w029999", Fit::Prefix, 20).unwrap().len(), 10);
        assert!(v.contains("w0299999w"));
    }

    #[test]
    fn a_failed_load_refuses_expansions_so_searches_scan() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("empty.db")).unwrap();
        let v = Arc::new(Vocab::default());
        // No vocab table: the read fails.
        v.load_in_background(conn, "").unwrap();
        assert_eq!(v.expand("anything", Fit::Contains, 10), None);
    }

    #[test]
    fn a_load_does_not_bring_back_words_after_a_clear() {
        let dir = tempfile::tempdir().unwrap();
        let conn = vocab_db(dir.path(), 10);
        let v = Vocab::default();
        let before = v.generation();
        v.read_all(&conn, "", before).unwrap();
        assert!(v.contains("needleword"));
        // The mailbox is emptied while a load that started before it reads.
        v.clear();
        v.read_all(&conn, "", before).unwrap();
        assert!(!v.contains("needleword"), "a stale load re-added old words");
        assert_eq!(v.expand("needle", Fit::Contains, 10), Some(Vec::new()));
    }

    /// The allocating tokenizer `each_token` replaced, kept as the reference.
    fn reference_tokens(cleaned: &str) -> Vec<Tok> {
        fn push_space(out: &mut Vec<Tok>, next_is_word: bool) {
            let prev_is_word = matches!(out.last(), Some(Tok::Word(_)));
            if !(out.is_empty() || prev_is_word && next_is_word) {
                out.push(Tok::Space);
            }
        }
        let mut out: Vec<Tok> = Vec::new();
        let mut word = String::new();
        let mut space = false;
        for c in cleaned.chars() {
            if is_word_char(c) {
                if word.is_empty() && space {
                    push_space(&mut out, true);
                    space = false;
                }
                word.push(c);
                continue;
            }
            if !word.is_empty() {
                out.push(Tok::Word(std::mem::take(&mut word)));
            }
            if c == ' ' {
                space = true;
                continue;
            }
            if space {
                push_space(&mut out, false);
                space = false;
            }
            out.push(Tok::Sym(if c.is_ascii_graphic() {
                c.to_string()
            } else {
                format!("_{:02x}", c as u32 & 0xff)
            }));
        }
        if !word.is_empty() {
            out.push(Tok::Word(word));
        }
        out
    }

    /// The borrowing tokenizer gives exactly the old token streams, over
    /// texts drawn (seeded xorshift, seed printed) from an alphabet of word
    /// characters, symbols, spaces, control and non-ASCII characters.
    #[test]
    fn borrowed_tokens_equal_the_reference() {
        let alphabet: Vec<char> = "ab9 Z@.-_ %\u{1}\u{7f}\tü€ ".chars().collect();
        let seed: u64 = 0x5eed_1234_abcd_0001;
        println!("seed {seed:#x}");
        let mut x = seed;
        for _ in 0..5000 {
            let mut s = String::new();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            for _ in 0..(x % 24) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.push(alphabet[(x % alphabet.len() as u64) as usize]);
            }
            assert_eq!(tokens(&s), reference_tokens(&s), "{s:?}");
        }
    }

    #[test]
    fn spaces_between_words_are_implied_and_others_kept() {
        assert_eq!(
            encode("user42@example.com weekly summary"),
            "user42 @ example . com weekly summary"
        );
        assert_eq!(encode("a @b"), "a __ @ b");
        assert_eq!(encode("a@ b"), "a @ __ b");
        assert_eq!(encode("a @ b"), "a __ @ __ b");
        assert_eq!(encode("a@@b"), "a @ @ b");
        assert_eq!(encode("grüße 5% x\u{1}y"), "grüße 5 % __ x _01 y");
        assert_eq!(encode("@ x"), "@ __ x");
    }

    #[test]
    fn vocabulary_expands_and_caps() {
        let v = Vocab::default();
        v.extend(["database", "databases", "mydatabase", "data"].map(String::from));
        let mut c = v.expand("database", Fit::Contains, 10).unwrap();
        c.sort();
        assert_eq!(c, vec!["database", "databases", "mydatabase"]);
        assert_eq!(v.expand("base", Fit::Suffix, 10).unwrap().len(), 2);
        assert_eq!(v.expand("data", Fit::Prefix, 10).unwrap().len(), 3);
        assert_eq!(v.expand("a", Fit::Contains, 3), None);
    }
}
