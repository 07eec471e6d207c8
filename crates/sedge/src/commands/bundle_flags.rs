//! `sedge serve` flags bounding what one upload may cost the node: the
//! archive's size, what it unpacks to, how many are received at once, and
//! how long installing its dependencies may take.

use sedge_gateway::Node;
use sedge_store::UnpackLimits;

fn size(text: &str) -> Result<u64, String> {
    match text.trim().parse::<bytesize::ByteSize>() {
        Ok(s) if s.as_u64() > 0 => Ok(s.as_u64()),
        Ok(_) => Err("must be larger than zero".into()),
        Err(_) => Err(format!("expected a size like \"64KiB\", \"512MiB\" or \"1GiB\", found {text:?}")),
    }
}

#[derive(clap::Args)]
pub struct BundleFlags {
    /// Largest bundle archive (tar.gz) accepted by PUT /system/bundles/NAME.
    #[arg(long, env = "SEDGE_MAX_BUNDLE", default_value = "512MiB", value_parser = size, value_name = "SIZE")]
    max_bundle: u64,
    /// Most bytes one bundle may unpack to (a gzip bomb stops here: 413).
    #[arg(long, env = "SEDGE_MAX_UNPACKED", default_value = "1GiB", value_parser = size, value_name = "SIZE")]
    max_unpacked: u64,
    /// Most entries (files, folders, links) in one bundle.
    #[arg(long, env = "SEDGE_MAX_BUNDLE_ENTRIES", default_value_t = 10_000, value_name = "N")]
    max_bundle_entries: usize,
    /// Deepest folder nesting of a bundle entry.
    #[arg(long, env = "SEDGE_MAX_BUNDLE_DEPTH", default_value_t = 32, value_name = "N")]
    max_bundle_depth: usize,
    /// Longest path (and link target) of a bundle entry, in bytes.
    #[arg(long, env = "SEDGE_MAX_BUNDLE_PATH", default_value_t = 1024, value_name = "N")]
    max_bundle_path: usize,
    /// Largest sedge.toml in a bundle.
    #[arg(long, env = "SEDGE_MAX_MANIFEST", default_value = "64KiB", value_parser = size, value_name = "SIZE")]
    max_manifest: u64,
    /// Bundle uploads received at once, node-wide; more are answered 503.
    #[arg(long, env = "SEDGE_MAX_UPLOADS", default_value_t = 2, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_uploads: u32,
    /// Longest a function's dependency install (pip for requirements.txt,
    /// npm for package.json) may take before the deploy fails.
    #[arg(long, env = "SEDGE_BUILD_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    build_timeout: std::time::Duration,
}

impl BundleFlags {
    pub fn limits(&self) -> UnpackLimits {
        UnpackLimits {
            max_unpacked: self.max_unpacked,
            max_entries: self.max_bundle_entries,
            max_depth: self.max_bundle_depth,
            max_path_len: self.max_bundle_path,
            max_manifest: self.max_manifest,
        }
    }

    /// Applies the upload limits, and installs functions' dependencies
    /// into environments under `data` with these interpreters.
    pub fn configure(&self, node: Node, data: &std::path::Path, python: &str, node_js: &str) -> Node {
        let builder = sedge_gateway::deps::builder(data, python.to_owned(), node_js.to_owned(), self.build_timeout);
        node.with_upload_limits(self.max_bundle, self.max_uploads as usize).with_deps(builder)
    }
}
