//! A disk that stops taking writes: cache writes turn off (warned once, counted), every
//! request is still answered, and writes come back after a backoff once the disk does.
//!
//! The failure is real, made by the kernel, and needs no privileges (the tests run as root,
//! where permissions do not stop writes): a file-size limit of 0 bytes (RLIMIT_FSIZE) makes
//! every write that extends a file fail with EFBIG, as ENOSPC would on a full disk. The limit is
//! per process; nextest runs each test in its own process, and this file has a single test so
//! that `cargo test` does not share the limit with other tests either.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use crate::support::admin::{metric, with_admin};
use crate::support::fake_upstream::CHAT_PATH;
use crate::support::proxy::{Harness, ask};
use deja::cache::health::FIRST_BACKOFF_MS;
use parking_lot::Mutex;
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
use tokio::signal::unix::{SignalKind, signal};

/// SIGXFSZ: sent when a write passes the file-size limit. Its default action kills the process;
/// with a handler installed, the write fails with EFBIG instead.
const SIGXFSZ: i32 = 25;

/// Files cannot grow while this lives.
struct NoFileGrowth(Rlimit);

impl NoFileGrowth {
    fn start() -> NoFileGrowth {
        let old = getrlimit(Resource::Fsize);
        let zero = Rlimit {
            current: Some(0),
            maximum: old.maximum,
        };
        setrlimit(Resource::Fsize, zero).expect("lower RLIMIT_FSIZE (always allowed)");
        NoFileGrowth(old)
    }
}

impl Drop for NoFileGrowth {
    fn drop(&mut self) {
        setrlimit(Resource::Fsize, self.0).expect("restore RLIMIT_FSIZE");
    }
}

/// Log lines of this process, for counting warnings.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn install() -> Logs {
        let logs = Logs::default();
        let writer = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("deja=debug")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .init();
        logs
    }

    fn count(&self, message: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock())
            .matches(message)
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_that_refuses_writes_turns_caching_off_then_back_on() {
    let _xfsz = signal(SignalKind::from_raw(SIGXFSZ)).expect("handle SIGXFSZ");
    let logs = Logs::install();
    let h = Harness::with(with_admin).await;
    let stored_before = h.chat(&ask("stored before the trouble")).await;
    assert_eq!(
        h.chat(&ask("stored before the trouble"))
            .await
            .cache_status(),
        "hit"
    );

    // On disk before the trouble starts (sled writes every 200 ms; a reopen, like a crash,
    // loses what was not yet written).
    h.cache().flush().expect("flush");

    let limit = NoFileGrowth::start();
    // sled buffers writes, writes them out at least every 200 ms, and fails the next write
    // after a write-out failed: a few hundred milliseconds of requests are enough. Every one
    // of them is answered.
    let mut asked = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.cache().writes_enabled() {
        asked += 1;
        assert!(
            std::time::Instant::now() < deadline,
            "writes still on after 10 s ({asked} stores) on a disk that refuses them"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
        let question = format!("question {asked} while the disk refuses writes");
        let reply = h.chat(&ask(&question)).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
        assert!(reply.content().ends_with(&question), "{}", reply.text);
    }
    assert!(h.cache().write_failures() >= 1);
    eprintln!("writes turned off after {asked} stores on the refusing disk");
    let failures = h.cache().write_failures();

    // Writes off: answers come from upstream every time, and stored ones are still served.
    for _ in 0..3 {
        let reply = h.chat(&ask("asked while writes are off")).await;
        assert_eq!((reply.status, reply.cache_status()), (200, "miss"));
    }
    assert_eq!(h.upstream.calls(CHAT_PATH), 1 + asked + 3);
    let hit = h.chat(&ask("stored before the trouble")).await;
    assert_eq!(hit.cache_status(), "hit");
    assert_eq!(hit.content(), stored_before.content());
    assert!(h.cache().writes_skipped() >= 3);
    assert_eq!(
        h.cache().write_failures(),
        failures,
        "skipped writes are not failures"
    );

    // The backoff passes while the disk still refuses: the probe fails, writes stay off.
    h.clock.advance(Duration::from_millis(FIRST_BACKOFF_MS));
    assert_eq!(h.chat(&ask("probe on a bad disk")).await.status, 200);
    assert!(!h.cache().writes_enabled());
    assert_eq!(h.cache().write_failures(), failures + 1);

    // Operators see it in the metrics.
    let text = h.metrics().await;
    assert_eq!(metric(&text, "deja_cache_writes_enabled"), 0.0);
    assert!(metric(&text, "deja_cache_write_failures_total") >= 1.0);
    assert!(metric(&text, "deja_cache_writes_skipped_total") >= 3.0);

    // Space returns; after the (doubled) backoff the next store reopens the store and succeeds.
    drop(limit);
    assert_eq!(h.chat(&ask("before the next probe")).await.status, 200);
    assert!(!h.cache().writes_enabled(), "no retry before the backoff");
    h.clock.advance(Duration::from_millis(2 * FIRST_BACKOFF_MS));
    let first = h.chat(&ask("after recovery")).await;
    assert_eq!(first.cache_status(), "miss");
    assert!(
        h.cache().writes_enabled(),
        "the probe turned writes back on"
    );
    let again = h.chat(&ask("after recovery")).await;
    assert_eq!(again.cache_status(), "hit");
    assert_eq!(metric(&h.metrics().await, "deja_cache_writes_enabled"), 1.0);
    assert_eq!(again.content(), first.content());
    assert_eq!(
        h.chat(&ask("stored before the trouble")).await.content(),
        stored_before.content(),
        "entries written before the trouble survive the reopen"
    );
    h.cache().flush().expect("durable again");

    assert_eq!(
        logs.count("cache writes failed; turning them off"),
        1,
        "warned once"
    );
    assert_eq!(logs.count("cache writes resumed"), 1);
    assert_eq!(
        logs.count("cache store failed"),
        0,
        "no warning per request"
    );
}
