//! Start, run and drain the bridge.

use std::path::Path;
use std::process::ExitCode;

use crate::config;

/// Entry point of `bridge-runtime run`.
pub fn main(path: &Path) -> ExitCode {
    match config::load(path) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
