//! Automatic tags, as Mailpit sets them on a new message: from `X-Tags`,
//! from plus-addresses (`user+signup@example.org` is tagged `signup`;
//! `a+b+c@` gives `b` and `c`) of From, To, Cc and Bcc, and from the SMTP
//! AUTH user name; plus-address and `X-Tags` tags optionally Title-cased.
//! Pure functions over the parsed message: the writer only stores the
//! result.

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
}

impl Default for Tagging {
    fn default() -> Self {
        Self {
            plus_addresses: true,
            x_tags: true,
            title_case: false,
            username: false,
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
