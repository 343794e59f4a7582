//! Config validation shared by the validating constructors: errors name the config key
//! (`hidden_size must be > 0`), never a Debug dump of the whole struct.

use candle_core::{bail, Result};

/// Fails with "`{what}: {key} must be > 0`" for the first field that is zero.
pub(crate) fn positive(what: &str, fields: &[(&str, usize)]) -> Result<()> {
    if let Some((key, _)) = fields.iter().find(|(_, v)| *v == 0) {
        bail!("{what}: {key} must be > 0");
    }
    Ok(())
}

/// Fails unless `value` is finite and > 0, naming `key`.
pub(crate) fn positive_f64(what: &str, key: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        bail!("{what}: {key} must be a finite number > 0, got {value}");
    }
    Ok(())
}
