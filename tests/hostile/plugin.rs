//! Hostile clients: plugin.
