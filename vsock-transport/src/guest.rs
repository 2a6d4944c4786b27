//! Guest backend (placeholder, being written).
