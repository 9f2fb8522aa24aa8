//! `mailgate plugin new`: writes a plugin skeleton that builds and loads as it is.

use std::path::PathBuf;

/// The command line of `mailgate plugin new`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The plugin's name (also the directory created).
    pub name: PathBuf,
}

/// Runs the command; the process exit status is the `Ok` value.
pub fn run(args: Args) -> anyhow::Result<i32> {
    let _ = args;
    anyhow::bail!("mailgate plugin new is not implemented yet")
}
