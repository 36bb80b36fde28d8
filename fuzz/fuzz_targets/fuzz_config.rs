//! Any text given to the config loader gives settings or an error naming the key, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sage_core::ConfigLayer::from_toml_str(text, "fuzz.toml");
        let vars = text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string()));
        let _ = sage_core::ConfigLayer::from_env_vars(vars);
    }
});
