//! Catcher configuration, named after Mailpit's settings so that the same
//! `MP_*` environment works for both.

use std::path::PathBuf;

/// Everything the catcher needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// SQLite database file (`MP_DATABASE`).
    pub database: PathBuf,
    /// SMTP listen address (`MP_SMTP_BIND_ADDR`).
    pub smtp_bind: String,
    /// HTTP listen address (`MP_UI_BIND_ADDR`).
    pub http_bind: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            database: PathBuf::from("mailsafe.db"),
            smtp_bind: "0.0.0.0:1025".into(),
            http_bind: "0.0.0.0:8025".into(),
        }
    }
}
