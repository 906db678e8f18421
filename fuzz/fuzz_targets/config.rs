//! Config files: any text must parse or give an error, never panic; what
//! parses must render to text that parses to the same rendering.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerd::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Relative files (secret_file, [tls]) resolve under a folder that does
    // not exist, so fuzzing never reads the machine's files.
    let source = "/nonexistent-peerlink-fuzz/fuzz.toml";
    for instance in ["a", "c"] {
        if let Ok(cfg) = Config::parse(instance, text, source) {
            let shown = cfg.render();
            if cfg.secret.is_none() {
                let again = Config::parse(instance, &shown, source).expect("a rendering parses");
                let skip_source = |s: &str| s.lines().skip(1).collect::<Vec<_>>().join("\n");
                assert_eq!(skip_source(&again.render()), skip_source(&shown));
            }
        }
    }
});
