//! Ctrl-C (SIGINT) and SIGTERM during training: the first one asks the loop to stop after the
//! current step and write a checkpoint ([`stop_requested`]); a second one ends the process at
//! once (exit status 130 for SIGINT, 143 for SIGTERM, as shells report a signal death).
//!
//! Handlers come from `signal-hook`, which keeps them async-signal-safe: the handler only
//! sets an atomic flag, and the conditional shutdown handler that runs before it exits when
//! the flag was already set.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

fn flag() -> &'static Arc<AtomicBool> {
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(false)))
}

/// Installs the SIGINT/SIGTERM handlers (once per process; later calls do nothing). Before
/// this, or where signals do not exist, the default behaviour (end at once) stays.
pub fn install() -> anyhow::Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            #[cfg(unix)]
            {
                use signal_hook::consts::{SIGINT, SIGTERM};
                for (sig, status) in [(SIGINT, 130), (SIGTERM, 143)] {
                    // Registered first, so it runs first: a signal that finds the flag already
                    // set (the second Ctrl-C) ends the process before the flag is set again.
                    signal_hook::flag::register_conditional_shutdown(sig, status, Arc::clone(flag()))
                        .map_err(|e| format!("installing the signal handler: {e}"))?;
                    signal_hook::flag::register(sig, Arc::clone(flag()))
                        .map_err(|e| format!("installing the signal handler: {e}"))?;
                }
            }
            Ok(())
        })
        .clone()
        .map_err(anyhow::Error::msg)
}

/// Whether a stop was asked for (a first Ctrl-C / SIGTERM, or [`request_stop`]).
pub fn stop_requested() -> bool {
    flag().load(Ordering::SeqCst)
}

/// Asks the training loop to stop as a first Ctrl-C would (tests, embedding programs).
pub fn request_stop() {
    flag().store(true, Ordering::SeqCst);
}

/// Forgets a stop request (a program that trains several runs in one process).
pub fn clear_stop() {
    flag().store(false, Ordering::SeqCst);
}
