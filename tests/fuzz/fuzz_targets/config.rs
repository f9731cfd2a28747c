//! Fuzz target: the configuration parser (`qoima::config::Config::parse`), TOML text to a
//! checked `Config`. Whatever the text, it returns a `Config` or a one-line error naming its
//! source (here "fuzz"); it never panics.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use qoima::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match Config::parse(text, "fuzz", Path::new("/"), &|_| None) {
        Ok(_) => {}
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.starts_with("fuzz"), "an error that does not name its source: {msg:?}");
            assert!(!msg.contains('\n'), "a multi-line error: {msg:?}");
        }
    }
});
