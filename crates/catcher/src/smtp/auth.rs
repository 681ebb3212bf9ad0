//! SMTP AUTH credentials, read the way Mailpit reads them: `MP_SMTP_AUTH`
//! holds space-separated `user:password` pairs, `MP_SMTP_AUTH_FILE` one
//! `user:password` per line (htpasswd style: the password may be a bcrypt
//! hash such as `htpasswd -B` writes).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// Whether and how the server accepts SMTP AUTH.
#[derive(Debug, Clone, Default)]
pub enum AuthPolicy {
    /// AUTH is not offered; everyone may send.
    #[default]
    None,
    /// AUTH is offered and any username/password is accepted, for clients
    /// that insist on authenticating (Mailpit's `MP_SMTP_AUTH_ACCEPT_ANY`).
    AcceptAny,
    /// Only these users may send; MAIL before AUTH gets 530.
    Users(Arc<Credentials>),
}

impl AuthPolicy {
    /// Whether a client must authenticate before MAIL.
    pub fn required(&self) -> bool {
        matches!(self, AuthPolicy::Users(_))
    }
}

/// Errors reading credentials.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The credentials file could not be read.
    #[error("cannot read SMTP auth file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// An entry is not `user:password`.
    #[error("SMTP auth entry {index} in {origin} is not user:password")]
    Syntax {
        /// `MP_SMTP_AUTH` or the file path.
        origin: String,
        /// 1-based position of the bad entry (never its text: it may hold a
        /// password).
        index: usize,
    },
}

/// Usernames and their passwords (plain or bcrypt).
#[derive(Clone, Default)]
pub struct Credentials {
    users: HashMap<String, String>,
}

impl std::fmt::Debug for Credentials {
    // Passwords must never reach a log line, so only the user count is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({} users)", self.users.len())
    }
}

impl Credentials {
    /// Parses space- or newline-separated `user:password` entries.
    pub fn parse(text: &str) -> Result<Self, AuthError> {
        Self::parse_from(text, "MP_SMTP_AUTH")
    }

    /// Reads a file of `user:password` lines (blank lines and `#` comments
    /// are skipped).
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        Self::parse_from(&lines.join("\n"), &path.display().to_string())
    }

    fn parse_from(text: &str, origin: &str) -> Result<Self, AuthError> {
        let mut users = HashMap::new();
        for (i, entry) in text.split_whitespace().enumerate() {
            match entry.split_once(':') {
                Some((user, pass)) if !user.is_empty() => {
                    users.insert(user.to_owned(), pass.to_owned());
                }
                _ => {
                    return Err(AuthError::Syntax {
                        origin: origin.to_owned(),
                        index: i + 1,
                    });
                }
            }
        }
        Ok(Self { users })
    }

    /// Adds the entries of `other`.
    pub fn extend(&mut self, other: Credentials) {
        self.users.extend(other.users);
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is right for `user`.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let Some(stored) = self.users.get(user) else {
            return false;
        };
        if stored.starts_with("$2a$") || stored.starts_with("$2b$") || stored.starts_with("$2y$") {
            return bcrypt::verify(password, stored).unwrap_or(false);
        }
        constant_time_eq(stored.as_bytes(), password.as_bytes())
    }
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a guessed password was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_bcrypt_passwords() {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        let mut creds = Credentials::parse("alice:pw bob:other").unwrap();
        creds.extend(Credentials::parse(&format!("carol:{hash}")).unwrap());
        assert!(creds.verify("alice", "pw"));
        assert!(!creds.verify("alice", "pw2"));
        assert!(!creds.verify("nobody", "pw"));
        assert!(creds.verify("carol", "s3cret"));
        assert!(!creds.verify("carol", "wrong"));
        assert_eq!(format!("{creds:?}"), "Credentials(3 users)");
    }

    #[test]
    fn bad_entry_is_reported_without_its_text() {
        let err = Credentials::parse("alice:pw secretwithoutcolon").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("entry 2"), "{msg}");
        assert!(!msg.contains("secretwithoutcolon"), "{msg}");
    }
}
