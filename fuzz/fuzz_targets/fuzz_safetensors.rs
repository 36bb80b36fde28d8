//! Any bytes given to the q/k/v loader give a file or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sage_core::io::parse_qkv(data, std::path::Path::new("fuzz.safetensors"));
});
