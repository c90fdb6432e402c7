//! The store on a real filesystem that fills up (ENOSPC): a small tmpfs mounted for the test.
//! (A read-only remount is refused while sled holds its files open for writing, so EROFS on a
//! live store cannot be provoked this way; the same write-failure path handles it.) Needs CAP_SYS_ADMIN (root on a VM, not in a default Docker
//! container); where mounting is not permitted the test says so loudly and checks nothing:
//! tests/it/disk_trouble.rs covers the same logic everywhere with a file-size limit.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::proxy::{Harness, ask};
use deja::cache::health::FIRST_BACKOFF_MS;

/// A tmpfs mounted at a temporary directory; unmounted on drop, also when a check fails.
struct Tmpfs {
    path: PathBuf,
    /// The mount point; removed after the unmount.
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .ok()?;
        status.success().then_some(Tmpfs { path, _dir: dir })
    }

    fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount {options}");
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Stores fresh answers until writes are off; every request is still answered.
async fn until_writes_off(h: &Harness, label: &str) -> usize {
    let padding = "x".repeat(4000);
    for n in 1..=2000 {
        let reply = h.chat(&ask(&format!("{label} {n} {padding}"))).await;
        assert_eq!(reply.status, 200, "{label} {n}");
        if !h.cache().writes_enabled() {
            return n;
        }
    }
    panic!("{label}: writes still on after 2000 stores");
}

async fn recovers(h: &Harness, label: &str) {
    h.clock
        .advance(Duration::from_millis(FIRST_BACKOFF_MS * 64));
    let question = format!("{label}: stored after recovery");
    assert_eq!(h.chat(&ask(&question)).await.cache_status(), "miss");
    assert!(h.cache().writes_enabled(), "{label}: writes back on");
    assert_eq!(h.chat(&ask(&question)).await.cache_status(), "hit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_filesystem_turns_writes_off_until_space_returns() {
    let Some(tmpfs) = Tmpfs::mount("2m") else {
        eprintln!(
            "\n*** disk_mount: NOT RUN: mounting a tmpfs is not permitted here (needs \
             CAP_SYS_ADMIN). tests/it/disk_trouble.rs covers disk trouble without privileges. ***\n"
        );
        return;
    };
    let dir = tmpfs.path().join("cache");
    let h = Harness::with(move |c| c.cache.dir = dir).await;

    // Full: ENOSPC.
    let full_after = until_writes_off(&h, "filling").await;
    let failures = h.cache().write_failures();
    assert!(failures >= 1);
    tmpfs.remount("size=64m");
    recovers(&h, "space returned").await;
    eprintln!("writes off after {full_after} stores on a full 2 MiB tmpfs");
}
