//! seqlab's tasks, end to end: language modelling ([`lm::LmTask`], `task = "lm"`), sequence
//! classification ([`classify::ClsTask`], `"classify"`) and time-series forecasting
//! ([`forecast::ForecastTask`], `"forecast"`). Each is a [`seqlab_train::Task`]: the engine in
//! `seqlab-train` trains, checkpoints, reports on and loads them; [`register`] adds them to
//! the `seqlab` binary's registry. All three share one task config ([`config::TaskConfig`]).

pub mod classify;
pub mod common;
pub mod config;
pub mod forecast;
pub mod lm;
pub mod models;

pub use seqlab_train::{Report, Split};

/// Adds `lm`, `classify` and `forecast` to the registry.
pub fn register(r: &mut seqlab_train::Registry) {
    r.add::<lm::LmTask>()
        .add::<classify::ClsTask>()
        .add::<forecast::ForecastTask>();
}
