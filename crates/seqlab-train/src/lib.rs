//! seqlab's training engine: a short training loop kept apart from the models, learning-rate
//! schedules as pure functions, atomic checkpoints that resume exactly, JSON-lines metrics and
//! plots.

pub mod checkpoint;
pub mod interrupt;
pub mod lock;
pub mod metrics;
pub mod overrides;
pub mod plot;
pub mod schedule;
pub mod trainer;

pub use lock::RunLock;
pub use overrides::RunFlags;
pub use schedule::Schedule;
pub use trainer::{LoopConfig, RunSummary, StopReason, TrainTask, Trainer};
