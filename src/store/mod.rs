//! Object stores (to be written).
