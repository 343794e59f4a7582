//! `seqlab export --format hf --checkpoint RUN DIR`: a trained translation model as a
//! Hugging Face M2M100 folder that Transformers loads and CTranslate2's converter converts
//! (what is exportable: `seqlab_mt::hf`); and the loader `seqlab translate` uses for
//! checkpoints in either format.

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use seqlab_mt::task::MtTask;
use std::path::{Path, PathBuf};

/// Target formats of `seqlab export`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// Hugging Face Transformers (`M2M100ForConditionalGeneration`: config.json,
    /// model.safetensors, tokenizer files, generation_config.json).
    Hf,
}

/// `seqlab export --format hf --checkpoint RUN DIR`
#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// Output format (only `hf` for now).
    #[arg(long, value_enum, default_value = "hf")]
    pub format: ExportFormat,
    /// A translation checkpoint folder, or its run folder (→ best checkpoint).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Output folder; must be empty or absent unless `--force`.
    #[arg(value_name = "DIR")]
    pub output: PathBuf,
    /// Write into an output folder that already has files (they are replaced).
    #[arg(long)]
    pub force: bool,
}

/// A translation model from a seqlab checkpoint (or run) folder, or from a Hugging Face
/// M2M100 folder (`config.json` and no `trainer.json`).
/// The model is built on `device`.
pub fn load_translation_model(path: &Path, device: &candle_core::Device) -> Result<MtTask> {
    if seqlab_mt::hf::is_hf_dir(path) {
        seqlab_mt::hf::load(path, device)
    } else {
        Ok(seqlab_train::load_on::<MtTask>(path, device)?.task)
    }
}

/// `seqlab export`.
pub fn run(a: ExportArgs) -> Result<()> {
    if !a.force && a.output.read_dir().is_ok_and(|mut d| d.next().is_some()) {
        bail!(
            "{}: folder exists and is not empty (use --force to write into it)",
            a.output.display()
        );
    }
    // CPU by design: export only copies tensors to files (the command's help says so).
    let task = load_translation_model(&a.checkpoint, &candle_core::Device::Cpu)?;
    match a.format {
        ExportFormat::Hf => {
            let e = seqlab_mt::hf::export(&task, &a.output)?;
            eprintln!(
                "wrote {} tensors and {} to {}",
                e.tensors,
                e.files.join(", "),
                a.output.display()
            );
        }
    }
    Ok(())
}
