//! Consistent page reads (to be written).
