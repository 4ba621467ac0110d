//! Where a response future finds its layer's pool when it has an error to
//! report, without holding a handle to it.
//!
//! A response future that held a `LivePool` clone paid a reference count
//! increment and decrement (two atomic read-modify-writes) on every
//! request, for the rare one that reports. Instead, each pool a layer was
//! made for is registered once, here, under a key; the response future
//! carries the key (a `u64`) and looks the pool up only when it found a
//! database error. The registry holds weak handles: it keeps no pool
//! alive, and an entry whose pool is gone is removed at the next
//! registration.

use std::sync::{PoisonError, RwLock};

use crate::live_pool::{AnyLive, WeakAnyLive};

/// The key of a registered pool. Keys are never reused, so a key outliving
/// its pool finds nothing rather than another pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Key(u64);

struct Registry {
    next: u64,
    pools: Vec<(Key, WeakAnyLive)>,
}

static REGISTRY: RwLock<Registry> = RwLock::new(Registry {
    next: 0,
    pools: Vec::new(),
});

/// The key of `live`'s pool: the one it already has if a layer was made
/// for the same pool before, else a new one.
pub(super) fn register(live: &AnyLive) -> Key {
    // Nothing here can panic with the lock held, but a poisoned registry is
    // still a consistent one.
    let mut registry = REGISTRY.write().unwrap_or_else(PoisonError::into_inner);
    registry.pools.retain(|(_, pool)| pool.is_alive());
    if let Some((key, _)) = registry.pools.iter().find(|(_, pool)| pool.points_to(live)) {
        return *key;
    }
    let key = Key(registry.next);
    registry.next += 1;
    registry.pools.push((key, live.downgrade()));
    key
}

/// The pool registered under `key`, unless every handle to it is gone.
#[cold]
pub(super) fn find(key: Key) -> Option<AnyLive> {
    let registry = REGISTRY.read().unwrap_or_else(PoisonError::into_inner);
    registry
        .pools
        .iter()
        .find(|(k, _)| *k == key)
        .and_then(|(_, pool)| pool.upgrade())
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use std::str::FromStr;

    use sqlx::sqlite::SqliteConnectOptions;

    use super::*;
    use crate::LivePool;

    #[tokio::test]
    async fn one_key_per_pool_and_none_once_it_is_gone() {
        let options = || SqliteConnectOptions::from_str("sqlite::memory:").expect("options");
        let a = LivePool::connect(options()).await.expect("pool a");
        let b = LivePool::connect(options()).await.expect("pool b");
        let key_a = register(&a.erase());
        assert_eq!(
            register(&a.clone().erase()),
            key_a,
            "the same pool, the same key"
        );
        let key_b = register(&b.erase());
        assert_ne!(key_a, key_b);
        let found = find(key_a).expect("pool a is alive");
        assert_eq!(found.generation(), a.generation());
        drop(found);
        drop(a);
        assert!(find(key_a).is_none(), "pool a is gone");
        assert!(find(key_b).is_some(), "pool b is still there");
    }
}
