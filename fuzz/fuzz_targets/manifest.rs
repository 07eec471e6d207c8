//! Bytes → `FunctionSpec::parse`: any text is either a spec or a
//! `ManifestError`, never a panic; a parsed spec's name is a valid name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sedge_core::{FunctionName, FunctionSpec};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(spec) = FunctionSpec::parse("sedge.toml", text) {
        assert!(FunctionName::parse(spec.name.as_str()).is_ok());
    }
});
