//! `sedge deploy DIR [--wait]`

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use sedge_core::FunctionSpec;
use sedge_store::pack::PackError;

use super::gateway::Gateway;
use crate::client::Client;
use crate::failure::hinted;

/// Deploy (or redeploy) a function folder containing a sedge.toml.
#[derive(clap::Args)]
pub struct Args {
    /// The function's folder: its code beside a sedge.toml.
    #[arg(value_name = "DIR")]
    dir: PathBuf,
    /// Wait until a worker has loaded the function, and fail if it cannot.
    #[arg(long)]
    wait: bool,
    #[command(flatten)]
    pub gateway: Gateway,
}

/// The folder's manifest and bundle, or an error saying what is wrong with
/// the folder and what it needs.
pub fn pack(dir: &Path) -> Result<(FunctionSpec, Vec<u8>)> {
    let fields = "README.md (\"A function\") lists the fields of sedge.toml";
    sedge_store::pack::pack(dir).map_err(|e| match e {
        PackError::Read { ref path, ref source }
            if source.kind() == std::io::ErrorKind::NotFound && path.ends_with("sedge.toml") =>
        {
            if dir.is_dir() {
                let what = anyhow!("{} has no sedge.toml", dir.display());
                hinted(
                    anyhow::Error::new(e).context(what),
                    format!(
                        "{} must contain a sedge.toml naming the function, its runtime and handler; {fields}",
                        dir.display()
                    ),
                )
            } else {
                let what = anyhow!("no such folder: {}", dir.display());
                hinted(
                    anyhow::Error::new(e).context(what),
                    "give the folder of a function, the one holding its sedge.toml",
                )
            }
        }
        PackError::Manifest(_) => hinted(e, format!("fix it and deploy again; {fields}")),
        other => other.into(),
    })
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let (spec, archive) = pack(&args.dir)?;
    let path = format!("/system/bundles/{}{}", spec.name, if args.wait { "?wait=true" } else { "" });
    let headers = [("content-type".to_owned(), "application/gzip".to_owned())];
    let answer = client.send("PUT", &path, &headers, archive)?.check(&format!("deploying {}", spec.name))?;
    let json = answer.json()?;
    let image = json.get("image").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
    if json.get("unchanged").and_then(|v| v.as_bool()) == Some(true) {
        println!("unchanged {} ({image}): the same bundle already serves; its workers keep running", spec.name);
    } else if answer.status == 202 {
        println!("updating {} ({image}): the new version serves once a worker of it has loaded;", spec.name);
        println!("until then the previous one does (`sedge describe {}` shows a failure)", spec.name);
    } else {
        let verb = if answer.status == 201 { "deployed" } else { "updated" };
        println!("{verb} {} ({image})", spec.name);
    }
    println!("invoke it: {}", client.url(&format!("/function/{}", spec.name)));
    Ok(())
}
