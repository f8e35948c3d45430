//! The pod lifecycle engine: a pure planner from (desired pod, observed runtime state)
//! to actions, and an executor that carries plans out through a CRI client.
//!
//! Not built yet: the engine lands with its own issue. This crate exists so that the
//! workspace has its final shape and the boundary between `kubelet` and `cri` is fixed.

pub mod handlers;
pub mod probe;
