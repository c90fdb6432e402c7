//! Graph dumps, so that a restart reloads large graphs instead of rebuilding them.
//!
//! A dumped scope has one graph file `<scope>-<gen>.graph` (`hnsw_file`) and a manifest
//! `<scope>.manifest` that names it with its blake3 hash, the embedder and the dimension. The
//! manifest is written last (temp file, fsync, rename), so a crash at any moment leaves the old
//! complete dump or the new one, never half of one. A manifest that is missing, unreadable, of
//! another version (version 1 dumps were hnsw_rs's f32 files), for another embedder or
//! dimension, or whose file does not hash as recorded is ignored and the scope is rebuilt from
//! the store. A dump does not list its ids apart from the graph's own: the caller reconciles
//! them with the store's.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::graph::GraphHnsw;
use super::hnsw_file;
use crate::cache::key::Hash32;

const VERSION: u32 = 2;
const SUFFIX: &str = ".graph";

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    embedder: String,
    dim: usize,
    basename: String,
    graph_hash: String,
}

/// The directory of dumps for one store and embedder.
pub struct Dumps {
    dir: PathBuf,
    embedder: String,
}

impl Dumps {
    /// Creates `dir` if needed; if that fails, loads find nothing and saves fail (warned).
    pub fn new(dir: PathBuf, embedder: &str) -> Dumps {
        if let Err(err) = fs::create_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %err, "index dump directory unusable");
        }
        Dumps {
            dir,
            embedder: embedder.to_string(),
        }
    }

    /// Deletes every dump (the stored vectors were dropped).
    pub fn clear(&self) -> io::Result<()> {
        for file in fs::read_dir(&self.dir)? {
            fs::remove_file(file?.path())?;
        }
        Ok(())
    }

    /// Writes `hnsw` as the dump of `scope`, replacing the previous one.
    pub fn save(&self, scope: &Hash32, dim: usize, hnsw: &GraphHnsw) -> io::Result<()> {
        let name = hex(scope);
        let gen_nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let basename = format!("{name}-{gen_nanos:x}");
        let graph = self.file(&basename);
        let mut file = File::create(&graph)?;
        hnsw_file::write(hnsw, &mut file)?;
        file.sync_all()?;
        let manifest = Manifest {
            version: VERSION,
            embedder: self.embedder.clone(),
            dim,
            graph_hash: hash_file(&graph)?,
            basename,
        };
        let previous = self.manifest(&name);
        let path = self.dir.join(format!("{name}.manifest"));
        let tmp = self.dir.join(format!("{name}.manifest.tmp"));
        let mut file = File::create(&tmp)?;
        file.write_all(&serde_json::to_vec(&manifest).map_err(io::Error::other)?)?;
        file.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.dir)?.sync_all()?;
        if let Some(previous) = previous
            && previous.basename != manifest.basename
        {
            let _ = fs::remove_file(self.file(&previous.basename));
        }
        Ok(())
    }

    /// The dumped graph of `scope`, if a complete dump for this embedder and `dim` exists.
    pub fn load(&self, scope: &Hash32, dim: usize) -> Option<GraphHnsw> {
        let manifest = self.manifest(&hex(scope))?;
        if manifest.version != VERSION || manifest.embedder != self.embedder || manifest.dim != dim
        {
            tracing::info!(scope = %scope.short(), "index dump is of another version, embedder or dimension; rebuilding");
            return None;
        }
        let graph = self.file(&manifest.basename);
        let started = std::time::Instant::now();
        let intact = hash_file(&graph).ok().as_ref() == Some(&manifest.graph_hash);
        tracing::debug!(scope = %scope.short(), elapsed_ms = started.elapsed().as_millis() as u64, "index dump hash checked");
        if !intact {
            tracing::warn!(scope = %scope.short(), "index dump missing or corrupt; rebuilding");
            return None;
        }
        let loaded = File::open(&graph).and_then(|file| {
            let len = file.metadata()?.len();
            hnsw_file::read(file, len)
        });
        match loaded {
            Ok(hnsw) if hnsw.dim == dim => Some(hnsw),
            Ok(_) | Err(_) => {
                tracing::warn!(scope = %scope.short(), "index dump unreadable; rebuilding");
                None
            }
        }
    }

    /// Deletes every dump but those of `scopes` (the ones just reloaded), and files no
    /// manifest names (leftovers of dumps a crash interrupted).
    pub fn retain(&self, scopes: &HashSet<Hash32>) -> io::Result<()> {
        let scopes: HashSet<String> = scopes.iter().map(hex).collect();
        let mut keep = Vec::new();
        let mut files = Vec::new();
        for file in fs::read_dir(&self.dir)? {
            let path = file?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let manifest = name
                .strip_suffix(".manifest")
                .filter(|scope| scopes.contains(*scope))
                .and_then(|scope| self.manifest(scope));
            match manifest {
                Some(manifest) => keep.push(manifest.basename),
                None => files.push(path),
            }
        }
        for path in files {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            let referenced = keep.iter().any(|basename| {
                name.strip_prefix(basename.as_str())
                    .is_some_and(|rest| rest == SUFFIX)
            });
            if !referenced {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }

    fn manifest(&self, name: &str) -> Option<Manifest> {
        let bytes = fs::read(self.dir.join(format!("{name}.manifest"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn file(&self, basename: &str) -> PathBuf {
        self.dir.join(format!("{basename}{SUFFIX}"))
    }
}

fn hex(scope: &Hash32) -> String {
    scope
        .as_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut hasher = blake3::Hasher::new();
    hasher.update_reader(File::open(path)?)?;
    Ok(hasher.finalize().to_hex().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Arc;

    use super::super::{DumpPolicy, IndexSettings, VectorIndex, VectorSource, normalize};
    use super::*;

    const DIM: usize = 24;
    const ANY: DumpPolicy = DumpPolicy { min_changes: 1 };

    fn unit(seed: u64) -> Vec<f32> {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut v: Vec<f32> = (0..DIM).map(|_| rng.f32() - 0.5).collect();
        normalize(&mut v);
        v
    }

    /// The store's stand-in: vector `id` is `unit(id)`.
    struct Regenerate;

    impl VectorSource for Regenerate {
        fn vector(&self, id: u64) -> Option<Vec<f32>> {
            Some(unit(id))
        }
    }

    fn index() -> VectorIndex {
        VectorIndex::new(
            IndexSettings {
                hnsw_min_entries: 16,
                ..IndexSettings::default()
            },
            Arc::new(Regenerate),
        )
    }

    /// An index with ids 0..40 in one graph scope, dumped into `dir` for embedder "e".
    fn dumped(dir: &Path) -> Dumps {
        let dumps = Dumps::new(dir.to_path_buf(), "e");
        let index = index();
        for id in 0..40 {
            index.insert(Hash32([1; 32]), id, &unit(id));
        }
        // The graph is built in the background.
        assert!(index.settle(std::time::Duration::from_secs(60)));
        assert_eq!(index.dump(&dumps, ANY), 1);
        assert_eq!(
            index.dump(&dumps, ANY),
            0,
            "unchanged graphs are not rewritten"
        );
        dumps
    }

    fn best(index: &VectorIndex, id: u64) -> Option<u64> {
        index
            .search(Hash32([1; 32]), &unit(id), 1)
            .first()
            .map(|c| c.id)
    }

    #[test]
    fn restore_reconciles_the_dump_with_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let dumps = dumped(dir.path());
        // Since the dump: 3..6 were removed, 40 and 41 stored.
        let live: HashSet<u64> = (0..42).filter(|id| !(3..6).contains(id)).collect();
        let index = index();
        assert!(index.restore(Hash32([1; 32]), &live, &dumps));
        assert_eq!(index.len(), 39);
        for id in 3..6 {
            let found = index.search(Hash32([1; 32]), &unit(id), 39);
            assert!(found.iter().all(|c| !(3..6).contains(&c.id)), "{found:?}");
        }
        assert_eq!(best(&index, 40), Some(40));
        assert_eq!(best(&index, 7), Some(7));
    }

    #[test]
    fn a_restored_graph_answers_as_the_dumped_one_with_exact_similarities() {
        let dir = tempfile::tempdir().unwrap();
        let dumps = Dumps::new(dir.path().to_path_buf(), "e");
        let before = index();
        for id in 0..200 {
            before.insert(Hash32([1; 32]), id, &unit(id));
        }
        assert!(before.settle(std::time::Duration::from_secs(60)));
        assert_eq!(before.dump(&dumps, ANY), 1);
        let after = index();
        assert!(after.restore(Hash32([1; 32]), &(0..200).collect(), &dumps));
        for id in (0..200).step_by(9) {
            let query = unit(id + 1000);
            let found = after.search(Hash32([1; 32]), &query, 4);
            assert_eq!(found, before.search(Hash32([1; 32]), &query, 4));
            for candidate in found {
                let stored = unit(candidate.id);
                let exact: f32 = query.iter().zip(&stored).map(|(a, b)| a * b).sum();
                assert_eq!(candidate.similarity, exact);
            }
        }
    }

    #[test]
    fn damaged_missing_or_foreign_dumps_are_not_used() {
        let live: HashSet<u64> = (0..40).collect();
        let scope = Hash32([1; 32]);

        let dir = tempfile::tempdir().unwrap();
        dumped(dir.path());
        let other = Dumps::new(dir.path().to_path_buf(), "another-model");
        assert!(!index().restore(scope, &live, &other));

        let dir = tempfile::tempdir().unwrap();
        let dumps = dumped(dir.path());
        let file = files_ending(dir.path(), SUFFIX).pop().unwrap();
        let mut bytes = fs::read(&file).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x5a;
        fs::write(&file, bytes).unwrap();
        assert!(!index().restore(scope, &live, &dumps), "damaged");

        let dir = tempfile::tempdir().unwrap();
        let dumps = dumped(dir.path());
        let data = files_ending(dir.path(), SUFFIX).pop().unwrap();
        fs::write(&data, b"").unwrap();
        assert!(!index().restore(scope, &live, &dumps), "truncated");

        // A dump of the old format (hnsw_rs's f32 files, manifest version 1) is rebuilt.
        let dir = tempfile::tempdir().unwrap();
        let dumps = dumped(dir.path());
        let manifest = files_ending(dir.path(), ".manifest").pop().unwrap();
        let text = fs::read_to_string(&manifest).unwrap();
        fs::write(&manifest, text.replace("\"version\":2", "\"version\":1")).unwrap();
        assert!(!index().restore(scope, &live, &dumps), "old version");

        let dir = tempfile::tempdir().unwrap();
        let dumps = dumped(dir.path());
        fs::remove_file(files_ending(dir.path(), ".manifest").pop().unwrap()).unwrap();
        assert!(!index().restore(scope, &live, &dumps), "no manifest");
    }

    #[test]
    fn retain_deletes_other_scopes_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let dumps = dumped(dir.path());
        fs::write(dir.path().join("x.manifest.tmp"), b"{").unwrap();
        fs::write(dir.path().join("orphan-1.hnsw.data"), b"").unwrap();
        fs::write(dir.path().join("orphan-2.graph"), b"").unwrap();
        dumps.retain(&HashSet::from([Hash32([1; 32])])).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
        dumps.retain(&HashSet::new()).unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
        fs::read_dir(dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect()
    }
}
