//! `mailgate plugin test`: runs one plugin, or the chain of a gateway config, over one
//! message offline and prints what happened.

use std::path::PathBuf;

/// The command line of `mailgate plugin test`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// A gateway config whose plugin chain runs.
    #[arg(long, conflicts_with = "plugin")]
    pub config: Option<PathBuf>,
    /// One plugin component to run alone.
    #[arg(required_unless_present = "config")]
    pub plugin: Option<PathBuf>,
}

/// Runs the command; the process exit status is the `Ok` value.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("mailgate plugin test is not implemented yet")
}
