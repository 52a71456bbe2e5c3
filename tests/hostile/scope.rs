//! Hostile clients: scope.
