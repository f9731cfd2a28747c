//! The commands the documentation prints are run here against a live vault, so they keep
//! working as printed.
//!
//! The README's session is marked `<!-- readme-session … -->` and checked below with its
//! expectations in code. The guides in `docs/` mark each block to run with a line
//! `<!-- tested: NAME … -->` right above a ```sh block; inside it, the lines `# → …` after a
//! command are what its output (stdout and stderr) must show, as fragments separated by `…`
//! that must appear in that order, and `# → [exit N]` the exit status it must end with
//! (0 otherwise). A block runs in one `bash`, so `cd`, `export` and here-documents work; a
//! block holding only `cargo run -- serve` or `qoima serve …` is started by the test itself
//! (the real binary, on a free port), and the base URL `http://127.0.0.1:8750` and the
//! tokens (`$SERVICE`, `$WEBSITE`, `$SECURITY`, `$AUDITOR`, `$MARKETING`; `$QOIMA_URL`) are
//! those of the vault under test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::helpers::*;

mod blocks;
mod deploy;
mod guides;
mod integrator;
mod python;
mod readme;
mod session;

use blocks::*;
use session::*;
