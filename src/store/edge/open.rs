//! Opening a collection's shard: its WAL restarted above the versions on disk, scratch
//! segments of an interrupted optimisation removed.

use super::*;

impl EdgeStore {
    pub(super) fn open_blocking(root: &Path, spec: &CollectionSpec) -> Result<Shard> {
        let dir = root.join(&spec.name);
        std::fs::create_dir_all(&dir).map_err(err)?;
        let spec_path = dir.join(SPEC_FILE);
        if let Ok(bytes) = std::fs::read(&spec_path) {
            let have: SpecFile = serde_json::from_slice(&bytes).map_err(err)?;
            if have.dim != spec.dim || have.model != spec.model {
                return Err(StoreError::DimensionMismatch {
                    collection: spec.name.clone(),
                    have: have.dim,
                    have_model: have.model,
                    want: spec.dim,
                    want_model: spec.model.clone(),
                });
            }
        } else {
            let f = SpecFile {
                model: spec.model.clone(),
                dim: spec.dim,
            };
            std::fs::write(&spec_path, serde_json::to_vec(&f).map_err(err)?).map_err(err)?;
        }
        // 0.7.0 never replays its WAL: what it holds is already in the flushed segments or lost.
        // But the WAL's index is the operation number every write is stamped with, and a point
        // ignores a write (an overwrite, a delete) numbered below its own version: a new WAL must
        // start above every version already on disk, or deletes after a restart silently do
        // nothing.
        let wal = dir.join("wal");
        let next_op = Self::next_op_number(&dir.join("segments"));
        if wal.exists() {
            std::fs::remove_dir_all(&wal).map_err(err)?;
        }
        Self::empty_wal_starting_at(&wal, next_op)?;
        // A kill during optimize() leaves scratch segments that load() does not remove.
        let _ = std::fs::remove_dir_all(dir.join("temp_segments"));
        let shard = EdgeShard::load(&dir, Some(Self::config(spec.dim))).map_err(|e| {
            let m = e.to_string();
            if m.contains("WouldBlock") || m.contains("lock") {
                StoreError::Locked(dir.display().to_string())
            } else {
                err(m)
            }
        })?;
        for field in ["doc_id", "version_key"] {
            shard
                .update(UpdateOperation::FieldIndexOperation(
                    FieldIndexOperations::CreateIndex(CreateIndex {
                        field_name: jp(field),
                        field_schema: Some(PayloadFieldSchema::FieldType(
                            PayloadSchemaType::Keyword,
                        )),
                    }),
                ))
                .map_err(err)?;
        }
        Ok(Shard {
            shard,
            write: Mutex::new(()),
            optimizing: Mutex::new(()),
            #[cfg(test)]
            fail_next_flush: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// An operation number above every version the shard's segments may hold: the largest
    /// persisted segment version, plus a margin for writes a kill interrupted mid-flush (their
    /// points may carry versions the segment's own record does not yet show).
    pub(super) fn next_op_number(segments: &Path) -> u64 {
        const MARGIN: u64 = 1 << 20;
        let mut max = 0u64;
        if let Ok(dirs) = std::fs::read_dir(segments) {
            for d in dirs.flatten() {
                let Ok(bytes) = std::fs::read(d.path().join("segment.json")) else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                max = max.max(v["version"].as_u64().unwrap_or(0));
            }
        }
        if max == 0 {
            0
        } else {
            max + MARGIN
        }
    }

    /// A WAL directory whose next entry is numbered `start`: one empty closed segment file,
    /// `closed-<start>` (the WAL's segment format: the bytes `wal`, format version 0, a random
    /// CRC seed; no entries).
    pub(super) fn empty_wal_starting_at(wal: &Path, start: u64) -> Result<()> {
        std::fs::create_dir_all(wal).map_err(err)?;
        if start == 0 {
            return Ok(());
        }
        let mut header = vec![0u8; 4096];
        header[..3].copy_from_slice(b"wal");
        header[3] = 0;
        let seed = uuid::Uuid::new_v4().as_u128() as u32;
        header[4..8].copy_from_slice(&seed.to_le_bytes());
        let path = wal.join(format!("closed-{start}"));
        std::fs::write(&path, &header).map_err(err)?;
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(err)
    }
}
