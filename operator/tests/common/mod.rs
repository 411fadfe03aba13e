//! Test support for the operator's tests.

pub mod fake_api;
pub mod local_up;
