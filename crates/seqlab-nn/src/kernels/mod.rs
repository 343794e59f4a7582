//! seqlab's unsafe CPU kernels (candle `CustomOp`s with hand-written backward passes).

pub(crate) mod selective_scan;
