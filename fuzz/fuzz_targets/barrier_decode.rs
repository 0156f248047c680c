//! Physical storage is untrusted: whatever bytes sit under a key, reading it
//! through the barrier must fail cleanly (integrity error), never panic, and
//! never authenticate.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use tresor_core::barrier::Barrier;
use tresor_sdk::Storage as _;
use tresor_storage::{Entry, MemoryStorage, Storage};

struct Fixture {
    rt: tokio::runtime::Runtime,
    physical: Arc<MemoryStorage>,
    barrier: Arc<Barrier>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let physical = Arc::new(MemoryStorage::new());
        let barrier = Barrier::new(physical.clone());
        rt.block_on(async {
            let key = [7u8; 32];
            barrier.initialize(&key).await.expect("init");
            barrier.unseal(&key).await.expect("unseal");
        });
        Fixture { rt, physical, barrier }
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    f.rt.block_on(async {
        f.physical
            .put(Entry {
                key: "fuzz/entry".into(),
                value: data.to_vec(),
            })
            .await
            .expect("physical put");
        assert!(f.barrier.get("fuzz/entry").await.is_err());
    });
});
