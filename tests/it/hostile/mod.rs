//! Issue #7: hostile input over HTTP. Property tests (proptest) send random subject ids, field
//! names, JSON bodies (deep, huge, invalid UTF-8, control characters, NUL, unicode), query
//! strings and header values to the real routes over raw TCP and check that the vault never
//! answers 5xx, that every error is a problem document, that no value sent is reflected, and
//! that a rejected request stores nothing. Then header abuse (huge, many, duplicated, non-ASCII
//! `Authorization`), and 1,500 concurrent idle, keep-alive and slowly sending connections.
//!
//! `QOIMA_HOSTILE_CASES` sets the number of property cases (default 256, a few seconds in a debug
//! build); figures of longer runs are in docs/reliability.md.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use qoima::domain::SubjectId;
use qoima::layout::subject_prefix;
use qoima::store::Space;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

mod cases;
mod headers;
mod many_connections;
mod properties;
mod raw;
mod regressions;
mod strategies;

use cases::*;
use raw::*;
use strategies::*;
