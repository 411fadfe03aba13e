//! The `logdb` command: the Kubernetes controller for `LogVolume` and `logdb up` (DESIGN.md §9,
//! §10). Built by issues 5 and 7; this crate holds its place in the workspace.
