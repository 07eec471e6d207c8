//! A version's own dependencies, installed before it may serve: the build's
//! output goes to the function's log (and to a deploy that asked to watch),
//! a failed install refuses the version with the installer's last lines.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sedge_core::FunctionSpec;
use sedge_deps::{Builder, Env};

use crate::{blocking, ApiError, Node};

/// Where a deploy's progress lines go while it runs, if someone watches.
pub type Progress = tokio::sync::mpsc::Sender<String>;

/// The instance name build lines carry in the function's log.
const BUILD: &str = "build";

/// Installs what `spec`'s folder `dir` asks for; `None` when it asks for nothing.
pub async fn install(
    node: &Arc<Node>,
    spec: &FunctionSpec,
    dir: &Path,
    progress: Option<&Progress>,
) -> Result<Option<Env>, ApiError> {
    let runtime = spec.runtime;
    let folder = dir.to_owned();
    let recipe = blocking(move || Ok(sedge_deps::detect(runtime, &folder)?)).await?;
    let Some(recipe) = recipe else { return Ok(None) };
    let Some(builder) = node.deps.as_ref() else {
        return Err(ApiError::new(
            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
            format!("this node does not install dependencies, but the folder has a {}", recipe.source_file()),
        ));
    };
    let name = spec.name.to_string();
    let logs = node.runtime.shared(&name);
    let log = |line: &str| logs.logs.push(&name, BUILD, line.to_owned());
    let say = {
        let progress = progress.cloned();
        move |line: &str| {
            log(line);
            if let Some(p) = progress.as_ref().filter(|_| !line.trim().is_empty()) {
                // A slow watcher misses lines rather than slowing the build.
                let _ = p.try_send(line.to_owned());
            }
        }
    };
    // An environment built before serves as it is (a restart asks nothing
    // of the interpreter beyond its version, asked once).
    if let Some(env) = builder.existing(&recipe).await.inspect_err(|e| log(&e.to_string()))? {
        say(&format!("{} unchanged: reusing environment {}", recipe.source_file(), env.key));
        return Ok(Some(env));
    }
    if builder.satisfied_by_node(&recipe).await {
        say(&format!("{} is met by the node's own Python packages: nothing to install", recipe.source_file()));
        return Ok(None);
    }
    say(&format!("installing {} of {name}", recipe.source_file()));
    // The watcher gets the failure as the deploy's answer; the log keeps it too.
    let env = builder.ensure(&recipe, dir, &say).await.inspect_err(|e| log(&e.to_string()))?;
    if env.reused {
        say(&format!("{} unchanged: reusing environment {}", recipe.source_file(), env.key));
    } else {
        say(&format!("installed {} into environment {}", recipe.source_file(), env.key));
    }
    Ok(Some(env))
}

/// The environment a pool's workers use, by its folder name.
pub fn key_of(deps: &Path) -> Option<String> {
    // Python's packages folder is the environment; node's is inside it.
    let root = if deps.file_name().is_some_and(|n| n == "node_modules") { deps.parent()? } else { deps };
    Some(root.file_name()?.to_string_lossy().into_owned())
}

fn keys_in_use(node: &Node) -> HashSet<String> {
    node.runtime.names().iter().filter_map(|n| node.runtime.get(n)?.deps().and_then(|d| key_of(d))).collect()
}

/// After a version stopped: its environment goes if no serving version uses it.
pub async fn release(node: &Arc<Node>, deps: Option<PathBuf>) {
    let (Some(builder), Some(key)) = (node.deps.clone(), deps.as_deref().and_then(key_of)) else { return };
    if keys_in_use(node).contains(&key) {
        return;
    }
    let gone = key.clone();
    match tokio::task::spawn_blocking(move || builder.remove(&gone).and_then(|()| builder.sweep_files())).await {
        Ok(Ok(_)) => tracing::debug!("removed environment {key}: no function uses it"),
        Ok(Err(e)) => tracing::warn!("removing environment {key}: {e}"),
        Err(e) => tracing::warn!("removing environment {key}: {e}"),
    }
}

/// At start, once every function is restored: removes environments none
/// uses and builds that were cut short.
pub async fn sweep(node: &Arc<Node>) {
    let Some(builder) = node.deps.clone() else { return };
    let keep = keys_in_use(node);
    match tokio::task::spawn_blocking(move || builder.sweep(&keep).and_then(|n| builder.sweep_files().map(|_| n))).await
    {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!("removed {n} unused environments"),
        Ok(Err(e)) => tracing::warn!("removing unused environments: {e}"),
        Err(e) => tracing::warn!("removing unused environments: {e}"),
    }
}

/// For `Node`: the builder keeping environments under `data`.
pub fn builder(data: &Path, python: String, node: String, timeout: std::time::Duration) -> Arc<Builder> {
    Arc::new(Builder::new(data.join("envs"), data.join("cache"), python, node, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_environment_is_named_by_its_folder() {
        assert_eq!(key_of(Path::new("/d/envs/py-ab12")).as_deref(), Some("py-ab12"));
        assert_eq!(key_of(Path::new("/d/envs/npm-cd34/node_modules")).as_deref(), Some("npm-cd34"));
    }
}
