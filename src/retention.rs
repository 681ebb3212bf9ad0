//! retention (to be written).
