//! `sedge deploy DIR [--wait]`

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use sedge_core::FunctionSpec;
use sedge_store::pack::PackError;
use serde_json::Value;

use super::gateway::Gateway;
use crate::client::{Answer, Client};
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
    let path = format!("/system/bundles/{}?progress=true{}", spec.name, if args.wait { "&wait=true" } else { "" });
    let headers = [("content-type".to_owned(), "application/gzip".to_owned())];
    let what = format!("deploying {}", spec.name);
    eprintln!("uploading {} ({})", spec.name, bytesize::ByteSize(archive.len() as u64));
    let mut last = None;
    client.send_lines("PUT", &path, &headers, archive, &what, |line| {
        let event: Value = serde_json::from_str(line).with_context(|| format!("the node sent {line:?}"))?;
        match event.get("log").and_then(Value::as_str) {
            // The dependency install's output, as it happens.
            Some(text) => eprintln!("  | {text}"),
            None => last = Some(event),
        }
        Ok(())
    })?;
    let last = last.ok_or_else(|| anyhow!("{what}: the node ended its answer before saying how the deploy went"))?;
    let (status, json) = outcome(last);
    let answer = Answer { status, body: serde_json::to_vec(&json).unwrap_or_default() };
    let answer = answer.check(&what)?;
    report(client, &spec.name.to_string(), answer.status, &json);
    Ok(())
}

/// The deploy's status and body from the stream's last line; a node that
/// does not stream answers with the body alone.
fn outcome(last: Value) -> (u16, Value) {
    let status = last.get("status").and_then(Value::as_u64).and_then(|s| u16::try_from(s).ok());
    match (status, last.get("function"), last.get("error")) {
        (Some(s), Some(f), _) => (s, f.clone()),
        (Some(s), None, Some(e)) => (s, serde_json::json!({ "error": e })),
        _ => (200, last),
    }
}

fn report(client: &Client, name: &str, status: u16, json: &Value) {
    let image = json.get("image").and_then(Value::as_str).unwrap_or_default();
    if json.get("unchanged").and_then(Value::as_bool) == Some(true) {
        println!("unchanged {name} ({image}): the same bundle already serves; its workers keep running");
    } else if status == 202 {
        println!("updating {name} ({image}): the new version serves once a worker of it has loaded;");
        println!("until then the previous one does (`sedge describe {name}` shows a failure)");
    } else {
        let verb = if status == 201 { "deployed" } else { "updated" };
        println!("{verb} {name} ({image})");
    }
    println!("invoke it: {}", client.url(&format!("/function/{name}")));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_carries_status_and_body() {
        let ok = outcome(serde_json::json!({"status": 201, "function": {"name": "f"}}));
        assert_eq!((ok.0, ok.1["name"].as_str()), (201, Some("f")));
        let failed = outcome(serde_json::json!({"status": 422, "error": "installing requirements.txt failed"}));
        assert_eq!(failed.0, 422);
        assert_eq!(failed.1["error"], "installing requirements.txt failed");
        let plain = outcome(serde_json::json!({"name": "f", "image": "d"}));
        assert_eq!((plain.0, plain.1["image"].as_str()), (200, Some("d")));
    }
}
