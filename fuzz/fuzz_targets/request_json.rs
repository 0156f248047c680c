//! Request bodies: any bytes must parse or be refused, never panic or
//! overflow the stack (nesting is bounded before parsing).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = tresor_http::fuzzing::parse_json(data);
});
