//! `seqlab config keys [TASK]`: every config key of a task with its meaning and default,
//! table by table, from the key tables beside the config structs (`seqlab_train::keys`).

use anyhow::Result;
use clap::{Args, Subcommand};

/// Inspect run configs.
#[derive(Args, Debug)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// Subcommands of `seqlab config`.
#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print every config key of TASK (engine keys: top level, [optim], [schedule], [train];
    /// then the task's: [data], [model], [loss], ...) with its default and meaning. Without
    /// TASK, list the tasks.
    Keys(KeysArgs),
}

/// `seqlab config keys`.
#[derive(Args, Debug)]
pub struct KeysArgs {
    /// The task, as in a config's `task = "..."`: lm, classify, forecast, mt, bert-pretrain,
    /// bert-finetune [default: list the tasks].
    pub task: Option<String>,
}

pub fn run(a: ConfigArgs) -> Result<()> {
    match a.command {
        ConfigCommand::Keys(k) => keys(k),
    }
}

fn keys(a: KeysArgs) -> Result<()> {
    let registry = crate::registry();
    let Some(task) = a.task else {
        let mut text = String::from("tasks (seqlab config keys TASK prints a task's keys):\n");
        for e in registry.entries() {
            text.push_str(&format!("  {:14} {}\n", e.name, e.about));
        }
        return print_all(&text);
    };
    let entry = registry.get(&task)?;
    let text = seqlab_train::keys::render(entry.name, entry.about, &entry.config_keys()?);
    print_all(&format!(
        "{text}\n# Any key can be overridden: seqlab train --config F --set table.key=value\n"
    ))
}

/// Prints to stdout; a closed pipe (`seqlab config keys mt | head`) ends quietly.
fn print_all(text: &str) -> Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
