//! The loaders a user feeds files to never panic: truncated, bit-flipped and random safetensors
//! bytes, arbitrary config text and mutated plans all give a value or an error. (The cargo-fuzz targets in `fuzz/`
//! explore the same functions with coverage guidance; this test runs everywhere on stable Rust.)

use std::collections::HashMap;
use std::path::Path;

use proptest::prelude::*;
use sage::random::{Distribution, Rng, random_qkv};
use sage::{ConfigLayer, DType, Layout, Plan, Shape, io};

/// A valid plan (`sage calibrate --input` on two real-qkv captures).
const PLAN: &str = include_str!("../crates/sage-core/tests/data/plan.json");

fn valid_file() -> Vec<u8> {
    let s = Shape::new(1, 2, 5, 8);
    let (q, k, v) = random_qkv(
        &mut Rng::new(1),
        s,
        s,
        DType::F16,
        Layout::Hnd,
        Distribution::Normal,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let meta: HashMap<String, String> = [("sm_scale".to_string(), "0.3".to_string())].into();
    io::qkv_to_bytes(&q, &k, &v, meta).unwrap_or_else(|e| panic!("{e}"))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn safetensors_mutations_never_panic(cut in 0usize..2000, flips in prop::collection::vec((0usize..2000, any::<u8>()), 0..6)) {
        let mut bytes = valid_file();
        for (at, byte) in flips {
            let i = at % bytes.len();
            bytes[i] ^= byte;
        }
        bytes.truncate(cut.min(bytes.len()));
        let _ = io::parse_qkv(&bytes, Path::new("fuzz.safetensors"));
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = io::parse_qkv(&bytes, Path::new("random.safetensors"));
    }

    #[test]
    fn plan_mutations_never_panic(cut in 0usize..6000, flips in prop::collection::vec((0usize..6000, 0u8..128), 0..6)) {
        let mut bytes = PLAN.as_bytes().to_vec();
        for (at, byte) in flips {
            let i = at % bytes.len();
            bytes[i] = byte;
        }
        bytes.truncate(cut.min(bytes.len()));
        if let Ok(plan) = Plan::from_json_str(&String::from_utf8_lossy(&bytes), "fuzz.json") {
            prop_assert!(plan.validate().is_ok());
        }
    }

    #[test]
    fn config_text_never_panics(text in "\\PC{0,200}") {
        let _ = ConfigLayer::from_toml_str(&text, "fuzz.toml");
    }

    #[test]
    fn config_like_text_never_panics(key in "[a-z_]{1,12}", value in "[a-z0-9\\-\\.\"\\[\\]{}= ]{0,16}") {
        let _ = ConfigLayer::from_toml_str(&format!("{key} = {value}\\n"), "fuzz.toml");
    }
}

#[test]
fn the_unmutated_file_loads() {
    let f =
        io::parse_qkv(&valid_file(), Path::new("ok.safetensors")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(f.q.shape(), Shape::new(1, 2, 5, 8));
    assert_eq!(f.sm_scale, Some(0.3));
}
