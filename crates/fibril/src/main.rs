//! The `fibril` binary: every component behind one executable. Invoked as
//! `fibril-cni` (by name, through a symlink) it is the CNI plugin.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "fibril",
    version,
    about = "Fibril: Kubernetes CNI with an eBPF datapath"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Print the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Version => println!("fibril {}", env!("CARGO_PKG_VERSION")),
    }
    Ok(())
}
