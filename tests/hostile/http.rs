//! Hostile clients: http.
