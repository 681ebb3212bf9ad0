//! Automatic tags, as Mailpit sets them on a new message: from `X-Tags`,
//! from plus-addresses (`user+signup@example.org` is tagged `signup`;
//! `a+b+c@` gives `b` and `c`) of From, To, Cc and Bcc, and from the SMTP
//! AUTH user name; plus-address and `X-Tags` tags optionally Title-cased.
//! Pure functions over the parsed message: the writer only stores the
//! result. Tag rules (`MP_TAG`, `MP_TAGS_CONFIG`: tags for the messages a
//! search matches) are parsed here and applied by the store once the
//! message is searchable (`Store::insert`).

use super::parse::{Address, Parsed};

/// Which automatic tags are set (`MP_TAGS_DISABLE`, `MP_TAGS_TITLE_CASE`,
/// `MP_TAGS_USERNAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagging {
    /// Tags from plus-addresses (on by default, as in Mailpit).
    pub plus_addresses: bool,
    /// Tags from the `X-Tags` header (on by default).
    pub x_tags: bool,
    /// Title-case plus-address and `X-Tags` tags (`signup` → `Signup`).
    pub title_case: bool,
    /// Tag with the SMTP AUTH user name.
    pub username: bool,
    /// Tag rules: a new message that a rule's search matches gets its tags.
    pub rules: Vec<TagRule>,
}

/// A tag rule: messages the search `query` matches get `tags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagRule {
    /// A Mailpit search (`subject:welcome`, `to:@example.org`).
    pub query: String,
    /// Tags to set, cleaned.
    pub tags: Vec<String>,
}

impl TagRule {
    /// Mailpit's `MP_TAG`: space-separated `tag1,tag2=search query` items
    /// (double quotes keep words together: `"Signup mail=subject:welcome to:x"`);
    /// the query is lower-cased, as Mailpit does. An item without `=` is an
    /// error naming it.
    pub fn parse_args(s: &str) -> Result<Vec<TagRule>, String> {
        let mut rules = Vec::new();
        for item in args(s) {
            let Some((tags, query)) = item.split_once('=') else {
                return Err(format!(
                    "invalid MP_TAG item {item:?}: expected tag1,tag2=search"
                ));
            };
            rules.extend(Self::new(query.trim().to_lowercase(), tags));
        }
        Ok(rules)
    }

    /// Mailpit's `MP_TAGS_CONFIG` YAML: `filters:` with `match:` (a search)
    /// and `tags:` (comma-separated) per rule.
    pub fn from_yaml(text: &str) -> Result<Vec<TagRule>, String> {
        #[derive(serde::Deserialize)]
        struct File {
            filters: Option<Vec<Filter>>,
        }
        #[derive(serde::Deserialize)]
        struct Filter {
            #[serde(rename = "match", default)]
            query: String,
            #[serde(default)]
            tags: String,
        }
        let file: File = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let filters = file
            .filters
            .ok_or_else(|| "missing \"filters:\" list".to_string())?;
        Ok(filters
            .into_iter()
            .filter_map(|f| Self::new(f.query.trim().to_string(), &f.tags))
            .collect())
    }

    /// A rule from a query and comma-separated tags; `None` (with a
    /// warning, as Mailpit skips it) when the query is empty or no tag is
    /// valid.
    fn new(query: String, tags: &str) -> Option<TagRule> {
        if query.is_empty() {
            tracing::warn!("ignoring a tag rule without a search");
            return None;
        }
        let tags: Vec<String> = tags
            .split(',')
            .map(super::parse::clean_tag)
            .filter(|t| {
                let ok = !t.is_empty();
                if !ok {
                    tracing::warn!(query, "ignoring an empty tag in a tag rule");
                }
                ok
            })
            .collect();
        (!tags.is_empty()).then_some(TagRule { query, tags })
    }
}

/// Mailpit's `ArgsParser`: splits on spaces outside double quotes, drops
/// the quotes.
fn args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut push = |cur: &mut String| {
        let v = cur.replace('"', "").trim().to_string();
        if !v.is_empty() {
            out.push(v);
        }
        cur.clear();
    };
    for c in s.chars() {
        if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if !quoted && c == ' ' {
            push(&mut cur);
        } else {
            cur.push(c);
        }
    }
    push(&mut cur);
    out
}

impl Default for Tagging {
    fn default() -> Self {
        Self {
            plus_addresses: true,
            x_tags: true,
            title_case: false,
            username: false,
            rules: Vec::new(),
        }
    }
}

impl Tagging {
    /// The automatic tags of `parsed` (whose `tags` hold its `X-Tags`),
    /// received from `username`; cleaned and de-duplicated by the writer.
    pub fn tags(&self, parsed: &Parsed, username: Option<&str>) -> Vec<String> {
        let mut tags = Vec::new();
        if self.x_tags {
            tags.extend(parsed.tags.iter().cloned());
        }
        if self.plus_addresses {
            let addrs = std::iter::once(&parsed.from)
                .chain(&parsed.to)
                .chain(&parsed.cc)
                .chain(&parsed.bcc);
            tags.extend(addrs.flat_map(plus_tags));
        }
        if self.title_case {
            tags = tags.iter().map(|t| title_case(t)).collect();
        }
        if self.username {
            tags.extend(username.filter(|u| !u.is_empty()).map(str::to_string));
        }
        tags
    }
}

/// Mailpit's `(?U)^(.*){1,}\+(.*)@`: the local part after its first `+`,
/// split on the further ones.
fn plus_tags(a: &Address) -> Vec<String> {
    let Some((local, _domain)) = a.address.split_once('@') else {
        return Vec::new();
    };
    match local.split_once('+') {
        Some((user, rest)) if !user.is_empty() => rest
            .split('+')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Upper-cases the first letter of each word, leaving the rest alone (Go's
/// `cases.Title(language.Und, cases.NoLower)`).
fn title_case(t: &str) -> String {
    let mut out = String::with_capacity(t.len());
    let mut start = true;
    for c in t.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_rules_parse_as_mailpit_reads_them() {
        let rules =
            TagRule::parse_args(r#"signup,new=subject:Welcome "Big Deal=larger:1mb to:ceo@x""#)
                .unwrap();
        assert_eq!(
            rules,
            [
                TagRule {
                    query: "subject:welcome".into(),
                    tags: vec!["signup".into(), "new".into()]
                },
                TagRule {
                    query: "larger:1mb to:ceo@x".into(),
                    tags: vec!["Big Deal".into()]
                },
            ]
        );
        assert!(TagRule::parse_args("justatag").is_err());
        let yaml = "filters:\n  - match: from:alerts@\n    tags: alert, ops\n  - match: \"\"\n    tags: x\n";
        assert_eq!(
            TagRule::from_yaml(yaml).unwrap(),
            [TagRule {
                query: "from:alerts@".into(),
                tags: vec!["alert".into(), "ops".into()]
            }]
        );
        assert!(TagRule::from_yaml("other: 1\n").is_err());
    }

    fn addr(a: &str) -> Address {
        Address {
            name: String::new(),
            address: a.into(),
        }
    }

    fn parsed() -> Parsed {
        let mut p = crate::storage::parse::parse(b"Subject: x\r\n\r\nbody\r\n");
        p.from = addr("noreply+Sender@example.com");
        p.to = vec![addr("alice+signup@example.org"), addr("bob@example.org")];
        p.cc = vec![addr("carol+a+b@example.org")];
        p.bcc = vec![addr("+nouser@example.org")];
        p.tags = vec!["from-header".into()];
        p
    }

    #[test]
    fn plus_addresses_x_tags_and_username_as_mailpit() {
        let t = Tagging::default().tags(&parsed(), Some("smtp-user"));
        assert_eq!(t, ["from-header", "Sender", "signup", "a", "b"]);
        let all = Tagging {
            title_case: true,
            username: true,
            ..Tagging::default()
        };
        assert_eq!(
            all.tags(&parsed(), Some("smtp-user")),
            ["From-Header", "Sender", "Signup", "A", "B", "smtp-user"]
        );
        let none = Tagging {
            plus_addresses: false,
            x_tags: false,
            ..Tagging::default()
        };
        assert!(none.tags(&parsed(), Some("u")).is_empty());
    }
}
