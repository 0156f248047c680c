//! Policy text comes from API callers: parsing, compiling and querying any
//! input must return, never panic or hang.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use tresor_core::policy::{parse_policy, Acl};
use tresor_sdk::Operation;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(policy) = parse_policy("fuzz", text) else {
        return;
    };
    let acl = Acl::new(&[Arc::new(policy)]);
    for path in ["", "secret/data/foo", "secret/", "a/b/c/d", "sys/raw/x"] {
        let _ = acl.capabilities(path);
        for op in [
            Operation::Read,
            Operation::List,
            Operation::Update,
            Operation::Help,
        ] {
            let _ = acl.allow(op, path, None);
        }
    }
});
