//! smtp (to be written).
