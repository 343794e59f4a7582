//! The device a run uses, named as in configs (`[train] device`) and on the command line
//! (`--device`): `"cpu"`, `"cuda"` (= `cuda:0`) or `"cuda:N"`.

use candle_core::{bail, Device, Result};

/// What a binary without the `cuda` feature says when asked for a GPU.
pub const NO_CUDA: &str = "this seqlab was built without CUDA; rebuild with --features cuda";

/// Checks a device name without opening the device: `"cpu"`, `"cuda"` or `"cuda:N"`
/// (N a GPU ordinal). Anything else is an error naming the value.
pub fn check_device_name(name: &str) -> Result<()> {
    ordinal(name).map(|_| ())
}

/// `None` for the CPU, `Some(N)` for `cuda:N`.
fn ordinal(name: &str) -> Result<Option<usize>> {
    match name.trim() {
        "cpu" => Ok(None),
        "cuda" => Ok(Some(0)),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(Some(n)),
            _ => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
        },
    }
}

/// Opens the named device. On a build without the `cuda` feature a CUDA name is the error
/// [`NO_CUDA`]; with it, a missing driver or GPU is candle's error, prefixed with the name.
pub fn parse_device(name: &str) -> Result<Device> {
    match check_available(name)? {
        // CPU by design: the device named "cpu".
        None => Ok(Device::Cpu),
        Some(n) => Device::new_cuda(n).map_err(|e| candle_core::Error::Msg(format!("device `{name}`: {e}"))),
    }
}

/// Checks, without opening anything, that this build can open the named device: the name's
/// CUDA ordinal (`None` for the CPU), or the error [`NO_CUDA`] for a CUDA name on a build
/// without the `cuda` feature, or an unknown name's error.
pub fn check_available(name: &str) -> Result<Option<usize>> {
    let n = ordinal(name)?;
    if n.is_some() && !cfg!(feature = "cuda") {
        bail!("device `{name}`: {NO_CUDA}");
    }
    Ok(n)
}

/// The name [`parse_device`] reads back: `"cpu"` or `"cuda:N"`.
pub fn device_name(dev: &Device) -> String {
    match dev.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_errors() {
        assert!(parse_device("cpu").unwrap().is_cpu());
        assert_eq!(device_name(&Device::Cpu), "cpu");
        assert!(check_device_name("cuda").is_ok());
        assert!(check_device_name("cuda:3").is_ok());
        for bad in ["gpu", "cuda:", "cuda:x", "CPU0", ""] {
            let e = check_device_name(bad).unwrap_err().to_string();
            assert!(e.contains("unknown device"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_says_how_to_rebuild() {
        let e = parse_device("cuda:1").unwrap_err().to_string();
        assert!(e.contains(NO_CUDA), "{e}");
    }
}
