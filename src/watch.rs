//! watch (to be written).
