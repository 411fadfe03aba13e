//! The `logdb` command: the `LogVolume` spec (the CRD's types), the manifest reader, and local
//! mode (`logdb up`, DESIGN.md §10). The Kubernetes controller (§9) builds on the same spec.

pub mod benchkit;
pub mod controller;
pub mod crd;
pub mod local;
pub mod manifest;
pub mod network_policy;
pub mod objects;
pub mod operator_mode;
pub mod rollout;
pub mod secrets;
pub mod sizing;
pub mod spec;
pub mod units;
