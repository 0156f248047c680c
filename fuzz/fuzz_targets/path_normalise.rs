//! Request paths come straight from the socket: the check must never panic,
//! and whatever it accepts must contain no `.`/`..` or empty segment once
//! decoded, so that ACLs see exactly the path that is served.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(p) = tresor_http::fuzzing::normalize_path(raw) {
        let body = p.strip_suffix('/').unwrap_or(&p);
        if !body.is_empty() {
            assert!(body
                .split('/')
                .all(|s| !s.is_empty() && s != "." && s != ".."));
        }
        assert!(!p.chars().any(char::is_control));
    }
});
