//! logdb config store: raft-replicated volume metadata, writer epoch tickets, placement and
//! segment growth (DESIGN.md §8). Built by issue 4; this crate holds its place in the workspace.
