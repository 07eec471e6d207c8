//! `sedge __sandbox-exec` (hidden): the launcher a sandboxed worker starts
//! through; see `sedge_runtime::sandbox::launch`. It runs before logging
//! or the async runtime are set up, and only ever for the node itself.

use std::ffi::OsString;

pub fn run(args: Vec<OsString>) -> i32 {
    sedge_runtime::sandbox::launch::main(args)
}
