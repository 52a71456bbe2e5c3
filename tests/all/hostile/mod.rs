//! The hostile-client suite: every reproduction of the hardening issue,
//! replayed against a real host. Each test asserts that the host stays up,
//! that other datastores and keys are unaffected, and that the bad request
//! gets a 4xx naming what is wrong. One module per topic.

mod http;
mod index;
mod plugin;
mod scope;
