//! Command-line entry points of the MT crate, wired into the `seqlab` binary by seqlab-cli.
//! Each is a clap `Args` struct plus a run function.

use crate::average::{average_checkpoints, last_checkpoints};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;

/// `seqlab average-checkpoints RUN_DIR -n 5 -o DIR`
#[derive(Args, Debug, Clone)]
pub struct AverageArgs {
    /// Run folder (or its `checkpoints/` folder) holding `step-*` checkpoints.
    pub run_dir: PathBuf,
    /// How many of the newest checkpoints to average (the paper: 5 for base, 20 for big).
    #[arg(short = 'n', long = "num", default_value_t = 5)]
    pub n: usize,
    /// Output checkpoint folder.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
}

/// Averages the parameters of the last `n` checkpoints into a new checkpoint folder.
pub fn average(a: AverageArgs) -> Result<()> {
    let dirs = last_checkpoints(&a.run_dir, a.n)?;
    let count = average_checkpoints(&dirs, &a.output)?;
    let names: Vec<String> = dirs
        .iter()
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    println!(
        "averaged {count} tensors over {} checkpoints ({}) into {}",
        dirs.len(),
        names.join(", "),
        a.output.display()
    );
    Ok(())
}

/// `seqlab plot-pe -o pe.png [--d-model 128 --max-len 100]`
#[derive(Args, Debug, Clone)]
pub struct PlotPeArgs {
    /// Output image, .png or .svg.
    #[arg(short = 'o', long = "output")]
    pub output: PathBuf,
    #[arg(long, default_value_t = 128)]
    pub d_model: usize,
    #[arg(long, default_value_t = 100)]
    pub max_len: usize,
}

/// Draws the sinusoidal positional-encoding table (positions × dimensions) as a heat map.
pub fn plot_pe(a: PlotPeArgs) -> Result<()> {
    if a.d_model == 0 || a.max_len == 0 {
        bail!("plot-pe: --d-model and --max-len must be positive");
    }
    let t = seqlab_nn::sinusoidal_table(a.max_len, a.d_model, &candle_core::Device::Cpu)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let t = t.reshape((a.max_len, a.d_model)).map_err(|e| anyhow::anyhow!("{e}"))?;
    let rows = t.to_vec2::<f32>().map_err(|e| anyhow::anyhow!("{e}"))?;
    let rl: Vec<String> = (0..a.max_len).map(|i| i.to_string()).collect();
    let cl: Vec<String> = (0..a.d_model).map(|i| i.to_string()).collect();
    let title = format!(
        "sinusoidal positional encoding (d_model {}, positions 0..{})",
        a.d_model, a.max_len
    );
    seqlab_train::plot::heatmap(&a.output, &title, &rows, &rl, &cl)?;
    println!("wrote {}", a.output.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plot_pe_writes_an_image_and_rejects_zero() {
        let out = std::env::temp_dir().join(format!("seqlab-mt-pe-{}.svg", std::process::id()));
        plot_pe(PlotPeArgs {
            output: out.clone(),
            d_model: 16,
            max_len: 10,
        })
        .unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 100);
        let _ = std::fs::remove_file(&out);
        assert!(plot_pe(PlotPeArgs {
            output: out,
            d_model: 0,
            max_len: 10
        })
        .is_err());
    }
}
