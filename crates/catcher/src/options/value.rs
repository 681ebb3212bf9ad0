//! Mailpit's value syntax for option values, as clap value parsers (plain
//! functions, so they build without clap too).

use std::convert::Infallible;

/// A boolean as Mailpit reads one: true when the lower-cased value is `1`,
/// `true` or `yes`, false for anything else. Never an error: Mailpit never
/// refuses a boolean, so `MP_SMTP_AUTH_ACCEPT_ANY=on` is false there and
/// here (clap's own parser would stop the start at `1`).
pub fn mailpit_bool(s: &str) -> Result<bool, Infallible> {
    Ok(matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes"
    ))
}

/// A size in MB (`MP_MAX_MESSAGE_SIZE`); 0 = unlimited, as in Mailpit.
/// Returns bytes, `None` for unlimited.
pub fn megabytes(mb: u64) -> Result<Option<usize>, String> {
    if mb == 0 {
        return Ok(None);
    }
    mb.checked_mul(1024 * 1024)
        .and_then(|b| usize::try_from(b).ok())
        .map(Some)
        .ok_or_else(|| format!("{mb} MB is too large"))
}

/// Mailpit's webroot normalised its way: `/` + path + `/`, at most one
/// slash at each end (`mail` and `/mail/` are both `/mail/`).
pub fn webroot(s: &str) -> Result<String, String> {
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-_.@".contains(*c)))
    {
        return Err(format!(
            "invalid character {c:?} in webroot {s:?}; valid: a-z A-Z 0-9 _ . - / @"
        ));
    }
    let parts: Vec<&str> = s.split('/').filter(|p| !p.is_empty()).collect();
    if parts.is_empty() {
        return Ok("/".into());
    }
    Ok(format!("/{}/", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_read_like_mailpit() {
        for t in ["1", "true", "TRUE", "yes", "Yes", " true "] {
            assert_eq!(mailpit_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "false", "no", "on", "y", "", "2", "enabled"] {
            assert_eq!(mailpit_bool(f), Ok(false), "{f}");
        }
    }

    #[test]
    fn sizes_are_megabytes_with_zero_unlimited() {
        assert_eq!(megabytes(0), Ok(None));
        assert_eq!(megabytes(50), Ok(Some(50 * 1024 * 1024)));
        assert!(megabytes(u64::MAX).is_err());
    }

    #[test]
    fn webroots_normalise_like_mailpit() {
        assert_eq!(webroot("").unwrap(), "/");
        assert_eq!(webroot("/").unwrap(), "/");
        assert_eq!(webroot("mail").unwrap(), "/mail/");
        assert_eq!(webroot("/a/b/").unwrap(), "/a/b/");
        assert!(webroot("/a b").is_err());
    }
}
