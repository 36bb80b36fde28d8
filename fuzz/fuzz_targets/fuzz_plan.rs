//! Any text given to the plan loader gives a validated plan or an error saying what is wrong, never
//! a panic; a plan it accepts writes back to JSON that loads to the same plan.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(plan) = sage_core::Plan::from_json_str(text, "fuzz.json") {
            let again = plan.to_json_string().expect("an accepted plan serializes");
            let back = sage_core::Plan::from_json_str(&again, "again.json").expect("and loads again");
            assert_eq!(back, plan);
            let _ = plan.check_model("fuzz", 6, 12);
        }
    }
});
