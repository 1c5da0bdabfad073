//! `ref set|get|list|rm`.

use std::process::ExitCode;

use anyhow::anyhow;
use casket_model::RefName;
use clap::Subcommand;
use serde_json::json;

use super::{Context, print_json};
use casket_store::RefStore;

/// The `casket ref` subcommands.
#[derive(Subcommand, Debug)]
pub enum RefCommand {
    /// Point a ref at a tree (a digest or another ref).
    Set {
        /// The ref, e.g. `project/element/cachekey`.
        name: RefName,
        /// A root digest `HASH/SIZE`, or an existing ref.
        tree: String,
    },
    /// Print the digest a ref points at.
    Get {
        /// The ref.
        name: RefName,
    },
    /// List refs.
    List {
        /// Print one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Remove a ref (the tree stays until expired).
    Rm {
        /// The ref.
        name: RefName,
    },
}

/// Runs a ref subcommand.
pub async fn run(cx: &Context, command: RefCommand) -> anyhow::Result<ExitCode> {
    match command {
        RefCommand::Set { name, tree } => {
            let digest = cx.resolve(&tree).await?;
            cx.refs.set(&name, &digest).await?;
        }
        RefCommand::Get { name } => {
            let digest = cx
                .refs
                .get(&name)
                .await?
                .ok_or_else(|| anyhow!("no ref named {name:?}"))?;
            out!("{digest}");
        }
        RefCommand::List { json } => {
            let refs = cx.refs.list().await?;
            if json {
                let list: Vec<_> = refs
                    .iter()
                    .map(|r| {
                        let touched = r.touched.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                        json!({ "name": r.name.as_str(), "digest": r.digest.to_string(), "touched_unix": touched })
                    })
                    .collect();
                return print_json(&serde_json::Value::Array(list));
            }
            for r in refs {
                out!("{}  {}", r.digest, r.name);
            }
        }
        RefCommand::Rm { name } => {
            if !cx.refs.delete(&name).await? {
                return Err(anyhow!("no ref named {name:?}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
