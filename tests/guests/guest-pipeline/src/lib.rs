//! `test.flaky`: events of type `test.*` with payload `{"n": N, "mode": M}`.
//! Matches when `n >= min`; `process` emits `{"n": N, "sub": SUB}` unless
//! `mode` says otherwise: `error` (plugin error), `invalid` (output that
//! breaks the schema), `panic` (trap), `drop` (no output), `once` (fails
//! the first time an event id is seen, through the host's state API). A
//! `pad` string in the payload is copied into the output.
//!
//! `sub` is a subscription-key param normalized to lowercase; `pre-consume`
//! refuses `sub=refuse`. A small buffer (16) and two workers. Outputs carry
//! `version` (1 here); version 2 (`guest-pipeline-v2`, the same file) also
//! refuses `sub=legacy`, for the hot-reload tests.

/// Which version of the key this is.
pub const VERSION: u32 = 1;

include!("key.rs");
