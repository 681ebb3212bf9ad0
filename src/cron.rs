//! cron (to be written).
