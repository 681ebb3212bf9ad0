//! Mailpit's Chaos: SMTP errors injected on purpose, so a team can test how
//! its mailer handles a server that refuses (`MP_ENABLE_CHAOS`,
//! `MP_CHAOS_TRIGGERS`, `GET`/`PUT /api/v1/chaos`).
//!
//! Three triggers, each an SMTP code (400-599) and a probability in
//! percent: `Sender` fails MAIL FROM, `Recipient` fails RCPT TO,
//! `Authentication` fails AUTH. A draw is uniform over 0..100 and the
//! trigger fires when it is below the probability, as in Mailpit, so 0
//! never fires and 100 always does (what tests use).

use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// One trigger: the code answered and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// SMTP code answered when the trigger fires (400-599).
    #[serde(rename = "ErrorCode", default)]
    pub error_code: u16,
    /// Chance of firing, in percent (0-100).
    #[serde(rename = "Probability", default)]
    pub probability: u8,
}

/// The three triggers, shaped like Mailpit's `ChaosTriggers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Triggers {
    /// Fails MAIL FROM.
    #[serde(rename = "Sender", default = "Trigger::sender")]
    pub sender: Trigger,
    /// Fails RCPT TO.
    #[serde(rename = "Recipient", default = "Trigger::sender")]
    pub recipient: Trigger,
    /// Fails AUTH.
    #[serde(rename = "Authentication", default = "Trigger::authentication")]
    pub authentication: Trigger,
}

impl Trigger {
    fn sender() -> Self {
        Trigger {
            error_code: 451,
            probability: 0,
        }
    }

    fn authentication() -> Self {
        Trigger {
            error_code: 535,
            probability: 0,
        }
    }

    /// Whether this trigger fires now; the code to answer if it does.
    pub fn fire(&self) -> Option<u16> {
        if self.probability == 0 {
            return None;
        }
        (rand::random_range(0..100u8) < self.probability).then_some(self.error_code)
    }
}

impl Default for Triggers {
    fn default() -> Self {
        Triggers {
            sender: Trigger::sender(),
            recipient: Trigger::sender(),
            authentication: Trigger::authentication(),
        }
    }
}

/// An invalid trigger (from `MP_CHAOS_TRIGGERS` or the API).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChaosError {
    /// Not `Key:code:probability`.
    #[error(
        "invalid chaos trigger {0:?}: expected Sender|Recipient|Authentication:CODE:PROBABILITY"
    )]
    Syntax(String),
    /// An unknown trigger name.
    #[error("unknown chaos trigger {0:?}: expected Sender, Recipient or Authentication")]
    UnknownKey(String),
    /// A code outside 400-599.
    #[error("chaos error code {0} must be between 400 and 599")]
    Code(u32),
    /// A probability above 100.
    #[error("chaos probability {0} must be between 0 and 100")]
    Probability(u32),
}

impl Triggers {
    /// Sets one trigger by Mailpit's key (`sender`, `recipient(s)`,
    /// `auth(entication)`, any case), checking code and probability; a code
    /// of 0 means the trigger's default (451, or 535 for authentication).
    pub fn set(&mut self, key: &str, code: u32, probability: u32) -> Result<(), ChaosError> {
        let (slot, default) = match key.to_ascii_lowercase().as_str() {
            "sender" => (&mut self.sender, 451),
            "recipient" | "recipients" => (&mut self.recipient, 451),
            "auth" | "authentication" => (&mut self.authentication, 535),
            _ => return Err(ChaosError::UnknownKey(key.into())),
        };
        let code = if code == 0 { default } else { code };
        if !(400..=599).contains(&code) {
            return Err(ChaosError::Code(code));
        }
        if probability > 100 {
            return Err(ChaosError::Probability(probability));
        }
        *slot = Trigger {
            error_code: code as u16,
            probability: probability as u8,
        };
        Ok(())
    }

    /// Mailpit's `MP_CHAOS_TRIGGERS`: comma-separated `Key:code:probability`
    /// items (`Sender:451:50,Authentication:535:100`), over the defaults.
    pub fn parse(s: &str) -> Result<Self, ChaosError> {
        let mut t = Triggers::default();
        for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let parts: Vec<&str> = item.split(':').collect();
            let [key, code, probability] = parts[..] else {
                return Err(ChaosError::Syntax(item.into()));
            };
            let ok = |s: &str, len: Option<usize>| {
                !s.is_empty()
                    && s.bytes().all(|b| b.is_ascii_digit())
                    && len.is_none_or(|l| s.len() == l)
            };
            if key.is_empty()
                || !key.bytes().all(|b| b.is_ascii_alphanumeric())
                || !ok(code, Some(3))
                || !ok(probability, None)
            {
                return Err(ChaosError::Syntax(item.into()));
            }
            let probability = probability
                .parse()
                .map_err(|_| ChaosError::Syntax(item.into()))?;
            t.set(key, code.parse().unwrap_or(0), probability)?;
        }
        Ok(t)
    }

    /// Replaces every trigger from an API request (Mailpit's `SetFromStruct`:
    /// a code of 0 takes the default), checking each.
    pub fn checked(self) -> Result<Self, ChaosError> {
        let mut t = Triggers::default();
        t.set(
            "sender",
            self.sender.error_code.into(),
            self.sender.probability.into(),
        )?;
        t.set(
            "recipient",
            self.recipient.error_code.into(),
            self.recipient.probability.into(),
        )?;
        t.set(
            "authentication",
            self.authentication.error_code.into(),
            self.authentication.probability.into(),
        )?;
        Ok(t)
    }
}

/// The live chaos settings, shared by the SMTP sessions and the API; `None`
/// when chaos is not enabled.
pub type Chaos = Option<Arc<RwLock<Triggers>>>;

/// The triggers now (all off when chaos is not enabled).
pub fn current(chaos: &Chaos) -> Option<Triggers> {
    chaos
        .as_ref()
        .map(|c| *c.read().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_parse_as_mailpit_reads_them() {
        let t = Triggers::parse("Sender:451:50, authentication:535:100").unwrap();
        assert_eq!(
            t.sender,
            Trigger {
                error_code: 451,
                probability: 50
            }
        );
        assert_eq!(t.authentication.probability, 100);
        assert_eq!(t.recipient, Trigger::sender());
        assert!(matches!(
            Triggers::parse("Sender:45:50"),
            Err(ChaosError::Syntax(_))
        ));
        assert_eq!(Triggers::parse("Sender:350:50"), Err(ChaosError::Code(350)));
        assert_eq!(
            Triggers::parse("Sender:451:101"),
            Err(ChaosError::Probability(101))
        );
        assert!(matches!(
            Triggers::parse("Helo:451:1"),
            Err(ChaosError::UnknownKey(_))
        ));
    }

    #[test]
    fn zero_never_fires_and_one_hundred_always_does() {
        let never = Trigger {
            error_code: 451,
            probability: 0,
        };
        let always = Trigger {
            error_code: 452,
            probability: 100,
        };
        for _ in 0..1000 {
            assert_eq!(never.fire(), None);
            assert_eq!(always.fire(), Some(452));
        }
    }

    #[test]
    fn an_api_request_with_code_zero_takes_the_defaults() {
        let t = Triggers {
            sender: Trigger {
                error_code: 0,
                probability: 10,
            },
            recipient: Trigger {
                error_code: 550,
                probability: 5,
            },
            authentication: Trigger {
                error_code: 0,
                probability: 0,
            },
        }
        .checked()
        .unwrap();
        assert_eq!(t.sender.error_code, 451);
        assert_eq!(t.recipient.error_code, 550);
        assert_eq!(t.authentication.error_code, 535);
    }
}
