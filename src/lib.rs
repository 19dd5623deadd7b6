//! electra: pretraining ELECTRA text encoders (replaced-token detection).

pub mod backend;
pub mod cli;
pub mod data;
pub mod io;
pub mod model;
pub mod rng;
pub mod tape;
pub mod train;
