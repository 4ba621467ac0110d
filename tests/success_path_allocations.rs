//! Zero allocations per success-path request through the layer: a counting
//! global allocator, counting only this thread's allocations. With the
//! `metrics` feature, with a Prometheus recorder installed.
#![cfg(feature = "sqlite")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;

use sqlx::sqlite::SqliteConnectOptions;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_db_liveness::{DbLivenessLayer, LivePool};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; the
// thread-local counter is const-initialised and has no destructor, so
// touching it never allocates.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> usize {
    ALLOCATIONS.with(Cell::get)
}

/// A handler that allocates nothing: an empty response.
async fn ok(_req: http::Request<()>) -> Result<http::Response<()>, Infallible> {
    Ok(http::Response::new(()))
}

async fn allocations_per_request<S>(svc: &mut S, requests: usize) -> Result<usize, Infallible>
where
    S: Service<http::Request<()>, Response = http::Response<()>, Error = Infallible>,
{
    // Warm up once (lazy statics, the runtime's first poll).
    svc.ready().await?.call(http::Request::new(())).await?;
    let before = allocations();
    for _ in 0..requests {
        let response = svc.ready().await?.call(http::Request::new(())).await?;
        assert_eq!(response.status(), http::StatusCode::OK);
    }
    Ok(allocations() - before)
}

#[test]
fn no_allocation_on_the_success_path() -> Result<(), Box<dyn std::error::Error>> {
    // The counter sees an allocation made on this thread.
    let before = allocations();
    std::hint::black_box(Box::new(7u64));
    assert_eq!(
        allocations() - before,
        1,
        "the counting allocator is not in use"
    );

    // With the `metrics` feature, a real recorder is installed: had the
    // success path recorded anything, its key lookups would count here.
    #[cfg(feature = "metrics")]
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    rt.block_on(async {
        let live = LivePool::builder(
            SqliteConnectOptions::new()
                .filename(dir.path().join("alloc.db"))
                .create_if_missing(true),
        )
        .watchdog_interval(None)
        .open()
        .await?;

        let mut bare = service_fn(ok);
        let mut layered = DbLivenessLayer::new(live.clone()).layer(service_fn(ok));
        let bare_allocations = allocations_per_request(&mut bare, 1000).await?;
        let layered_allocations = allocations_per_request(&mut layered, 1000).await?;
        assert_eq!(bare_allocations, 0, "the baseline handler allocates");
        assert_eq!(
            layered_allocations, 0,
            "1000 requests through the layer allocated"
        );
        // The recorder is the one the crate records into.
        #[cfg(feature = "metrics")]
        assert!(
            recorder.render().contains("db_liveness_generation 0"),
            "{}",
            recorder.render()
        );
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
