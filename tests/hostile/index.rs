//! Hostile clients: index.
