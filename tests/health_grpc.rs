//! The gRPC health bridge, through a real tonic server and channel on
//! 127.0.0.1.
#![cfg(all(feature = "tonic", feature = "sqlite"))]

mod common;
mod health_support;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{TestDb, TestResult, create_table, warm};
use health_support::{BoxError, open_gated, within};
use sqlx::sqlite::SqliteJournalMode;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Channel, Server};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::Health;
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_db_liveness::health::grpc::GrpcHealthBridge;
use tower_db_liveness::{HealthService, LivePool, PoolStatus};

/// A tonic server with the health service on 127.0.0.1:0; stopped on drop.
struct GrpcServer {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

async fn serve_health(
    server: tonic_health::pb::health_server::HealthServer<impl Health>,
) -> Result<GrpcServer, BoxError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = Server::builder()
            .add_service(server)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async {
                    let _ = stopped.await;
                },
            )
            .await;
    });
    Ok(GrpcServer { addr, _stop: stop })
}

async fn client(addr: SocketAddr) -> Result<HealthClient<Channel>, BoxError> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    Ok(HealthClient::new(channel))
}

fn whole_server() -> HealthCheckRequest {
    HealthCheckRequest {
        service: String::new(),
    }
}

async fn check(client: &mut HealthClient<Channel>) -> Result<ServingStatus, BoxError> {
    let response = within("a Check answer", client.check(whole_server()))
        .await??
        .into_inner();
    Ok(response.status())
}

async fn check_named(
    client: &mut HealthClient<Channel>,
    service: &str,
) -> Result<ServingStatus, BoxError> {
    let request = HealthCheckRequest {
        service: service.to_owned(),
    };
    let response = within("a Check answer", client.check(request))
        .await??
        .into_inner();
    Ok(response.status())
}

/// Reads the Watch stream until it reports `want`, for at most 30 s.
async fn next_status(
    stream: &mut tonic::Streaming<HealthCheckResponse>,
    want: ServingStatus,
) -> Result<(), BoxError> {
    within(&format!("Watch to report {want:?}"), async {
        loop {
            let message = stream.message().await?.ok_or("the Watch stream ended")?;
            println!("Watch: {:?}", message.status());
            if message.status() == want {
                return Ok(());
            }
        }
    })
    .await?
}

#[tokio::test]
async fn check_and_watch_see_the_database_die_and_heal() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    // No watchdog: the bridge's own probe is what notices the dead file.
    let (live, gate, mut exits) = open_gated(&db, |b| b).await?;
    warm(&live.pool()).await?;
    let (reporter, health_server) = tonic_health::server::health_reporter();
    let bridge = GrpcHealthBridge::new(&HealthService::new(live.clone()), reporter)
        .probe_interval(Some(Duration::from_millis(50)))
        .spawn();
    let server = serve_health(health_server).await?;
    let mut client = client(server.addr).await?;
    let mut watch = client.watch(whole_server()).await?.into_inner();

    next_status(&mut watch, ServingStatus::Serving).await?;
    assert_eq!(check(&mut client).await?, ServingStatus::Serving);

    assert_eq!(
        check_named(&mut client, "liveness").await?,
        ServingStatus::Serving
    );
    assert_eq!(
        check_named(&mut client, "readiness").await?,
        ServingStatus::Serving
    );

    // No request fails: the file is simply gone under the WAL pool. The
    // probe that finds it fails readiness.
    db.replace_file().await?; // a restore: the same application's database
    next_status(&mut watch, ServingStatus::NotServing).await?;
    // The probe's finding reached the policy; the real reopen is held. A
    // heal in flight is readiness `warn` (requests are held by the layer,
    // then served by the new pool): SERVING again, and liveness never
    // left SERVING.
    assert!(live.is_healing());
    next_status(&mut watch, ServingStatus::Serving).await?;
    assert!(live.is_healing());
    assert_eq!(
        check_named(&mut client, "liveness").await?,
        ServingStatus::Serving
    );

    gate.open.notify_one();
    within("the heal", live.healed()).await?;
    assert_eq!(live.generation(), 1);
    assert_eq!(check(&mut client).await?, ServingStatus::Serving);
    assert_eq!(
        check_named(&mut client, "readiness").await?,
        ServingStatus::Serving
    );
    assert_eq!(exits.count_now(), 0);

    // The bridge ends with the LivePool.
    drop(live);
    within("the bridge to end", bridge).await??;
    Ok(())
}

/// What `status` of the whole server the health service answers at this
/// very instant: one poll, no waiting (`None` if it would have to wait).
fn status_now(service: &impl Health) -> Option<ServingStatus> {
    let mut check = pin!(service.check(tonic::Request::new(whole_server())));
    match check.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(response)) => Some(response.into_inner().status()),
        _ => None,
    }
}

// One worker: the heal task, spawned after the bridge's task was woken,
// runs first (tokio's LIFO slot) and gives up in one step, so only the
// give-up step can have set NOT_SERVING before the exit action.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn not_serving_is_set_before_the_exit_action_runs() -> TestResult {
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (reporter, health_server) = tonic_health::server::health_reporter();
    let reader = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    let (seen_tx, mut seen) = mpsc::unbounded_channel();

    let pool = TestDb::pool_options().connect_with(db.options()).await?;
    create_table(&pool).await?;
    let (_, reopen) = common::counting_reopen(db.options());
    let live = LivePool::builder_with_pool(pool, reopen)
        .watchdog_interval(None)
        // No rescue and a long recurrence window: the second fault gives up
        // in the same step that publishes it, leaving no time for a
        // subscriber to react before the exit action.
        .rescue(false)
        .recurrence_window(Duration::from_secs(3600))
        .on_give_up(move |_| {
            let _ = seen_tx.send(status_now(&reader));
        })
        .open()
        .await?;
    // Status changes only: no probe of its own.
    let _bridge = GrpcHealthBridge::new(&HealthService::new(live.clone()), reporter)
        .probe_interval(None)
        .spawn();
    let server = serve_health(health_server).await?;
    let mut client = client(server.addr).await?;
    let mut watch = client.watch(whole_server()).await?.into_inner();
    let mut status = live.subscribe();

    db.replace_file().await?; // a restore: the same application's database
    live.check_file().await.ok_or("no finding")?;
    within(
        "the heal",
        status.wait_for(|s| matches!(s, PoolStatus::Live { generation: 1, .. })),
    )
    .await?
    .ok_or("the LivePool is gone")?;
    next_status(&mut watch, ServingStatus::Serving).await?;

    // The same fault on the fresh pool: the policy gives up. Found on a
    // worker thread, so that the heal task lands in tokio's LIFO slot ahead
    // of the bridge's task.
    db.replace_file().await?; // a restore: the same application's database
    let finder = live.clone();
    tokio::spawn(async move { finder.check_file().await })
        .await?
        .ok_or("no finding")?;
    let at_exit = within("the exit action", seen.recv())
        .await?
        .ok_or("the exit action did not run")?;
    assert_eq!(at_exit, Some(ServingStatus::NotServing));
    assert_eq!(check(&mut client).await?, ServingStatus::NotServing);
    next_status(&mut watch, ServingStatus::NotServing).await?;
    Ok(())
}

/// A second angle on the before-exit step, independent of scheduling: the
/// bridge's task lives on a second runtime that is not driven while the
/// database dies, so the status the exit action sees can only have been set
/// by the step the policy awaits before it. The give-up comes from another
/// entry point: the HTTP probe finding the directory deleted (the reopen
/// then fails).
#[test]
fn the_before_exit_step_alone_sets_not_serving() -> TestResult {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let bridge_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = TestDb::new(SqliteJournalMode::Wal)?;
    let (reporter, _health_server) = tonic_health::server::health_reporter();
    let reader = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
    let (seen_tx, mut seen) = mpsc::unbounded_channel();

    let live = main.block_on(async {
        let pool = TestDb::pool_options().connect_with(db.options()).await?;
        create_table(&pool).await?;
        let (_, reopen) = common::counting_reopen(db.options());
        let reader = tonic_health::server::HealthService::from_health_reporter(reporter.clone());
        LivePool::builder_with_pool(pool, reopen)
            .watchdog_interval(None)
            .rescue(false)
            .on_give_up(move |_| {
                let _ = seen_tx.send(status_now(&reader));
            })
            .open()
            .await
    })?;
    let health = HealthService::new(live.clone());
    // The bridge starts on its own runtime and is driven until it has said
    // SERVING, then left undriven.
    bridge_rt.block_on(async {
        let _bridge = GrpcHealthBridge::new(&health, reporter)
            .probe_interval(None)
            .spawn();
        within("SERVING", async {
            while status_now(&reader) != Some(ServingStatus::Serving) {
                tokio::task::yield_now().await;
            }
        })
        .await
    })?;

    main.block_on(async {
        use tower::ServiceExt;
        db.rm_rf_dir()?;
        let answer = within(
            "the health answer",
            health.oneshot(http::Request::get("/health").body(())?),
        )
        .await??;
        assert_eq!(answer.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        let at_exit = within("the exit action", seen.recv())
            .await?
            .ok_or("the exit action did not run")?;
        assert_eq!(at_exit, Some(ServingStatus::NotServing));
        assert!(live.has_given_up());
        Ok::<_, BoxError>(())
    })?;
    drop(bridge_rt);
    Ok(())
}
