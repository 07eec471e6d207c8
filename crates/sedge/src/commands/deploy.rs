//! `sedge deploy DIR [--wait]`

use std::path::PathBuf;

use anyhow::Result;

use crate::client::Client;

/// Deploy (or redeploy) a function folder containing a sedge.toml.
#[derive(clap::Args)]
pub struct Args {
    dir: PathBuf,
    /// Wait until a worker has loaded the function, and fail if it cannot.
    #[arg(long)]
    wait: bool,
}

pub fn run(client: &Client, args: Args) -> Result<()> {
    let (spec, archive) = sedge_store::pack::pack(&args.dir)?;
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
