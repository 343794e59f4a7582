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
        println!("tasks (seqlab config keys TASK prints a task's keys):");
        for e in registry.entries() {
            println!("  {:14} {}", e.name, e.about);
        }
        return Ok(());
    };
    let entry = registry.get(&task)?;
    print!(
        "{}",
        seqlab_train::keys::render(entry.name, entry.about, &entry.config_keys()?)
    );
    println!("\n# Any key can be overridden: seqlab train --config F --set table.key=value");
    Ok(())
}
