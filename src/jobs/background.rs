//! Background work of the ingestor besides jobs: the optimiser that builds a collection's
//! index once it is quiet, and the wait for disk space.

use super::*;

impl Ingestor {
    /// Ask the background optimiser to (re)index this collection once it is quiet.
    pub fn mark_dirty(&self, collection: &str) {
        self.dirty
            .lock()
            .unwrap()
            .insert(collection.to_string(), Instant::now());
    }

    /// Whether the data disk has room for writes (always, without a guard).
    pub(super) fn room(&self) -> bool {
        self.disk.as_ref().is_none_or(|d| d.writable())
    }

    /// The disk is nearly full: the job goes back to `queued`, saying why (not a failure, not
    /// an attempt used), and is queued again once there is room.
    pub(super) async fn wait_for_room(&self, job: &JobRow) {
        let Some(disk) = self.disk.clone() else {
            return;
        };
        let _ = self
            .catalog
            .job_waiting(&job.id, &disk.waiting_note())
            .await;
        self.emit(&job.id).await;
        if let Some(q) = self.queue.get().cloned() {
            let (id, collection) = (job.id.clone(), job.collection.clone());
            tokio::spawn(async move {
                disk.wait_writable().await;
                q.submit(&collection, &id);
            });
        }
    }

    /// Background optimiser: builds HNSW indexes once a collection has been quiet for `quiet`.
    pub fn start_optimizer(self: &Arc<Self>, quiet: Duration) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let due: Vec<String> = {
                    let mut d = this.dirty.lock().unwrap();
                    let due: Vec<String> = d
                        .iter()
                        .filter(|(_, t)| t.elapsed() >= quiet)
                        .map(|(c, _)| c.clone())
                        .collect();
                    for c in &due {
                        d.remove(c);
                    }
                    due
                };
                if !this.room() {
                    // It writes new segments: not on a nearly full disk. Try again later.
                    let mut d = this.dirty.lock().unwrap();
                    for c in due {
                        d.entry(c).or_insert_with(Instant::now);
                    }
                    continue;
                }
                for c in due {
                    let t = Instant::now();
                    match this.store.optimize(&c).await {
                        Ok(changed) => tracing::info!(
                            collection = %c,
                            changed,
                            ms = t.elapsed().as_millis() as u64,
                            "index optimised"
                        ),
                        Err(e) => tracing::warn!(collection = %c, error = %e, "optimise failed"),
                    }
                }
            }
        });
    }
}
