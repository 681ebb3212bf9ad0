//! restore (to be written).
