//! Ingestion: agent pushes parsed into index operations ([`rows`]).
//! The bounded queue and the per-datastore apply worker come with the
//! datastore routes.

pub mod rows;
