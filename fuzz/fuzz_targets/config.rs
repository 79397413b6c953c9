//! The daemon's config: parsing, validation and building the handler must
//! never panic or abort (a bad file on SIGHUP must leave the running daemon
//! alive); every error names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use oomkit_daemon::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(Path::new("fuzz.toml"), text) {
        Ok(loaded) => {
            let _ = loaded.config.build_handler();
            let _ = loaded.config.engine_config();
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml")),
    }
});
