//! The queue of ingestion jobs: one line per collection, and the next job comes from the
//! collection served least recently (a tie goes to the job waiting longest). A collection with
//! a hundred slow documents in line therefore holds up another's single upload for at most the
//! jobs already running, not for as long as the hundred take.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

#[derive(Clone, Default)]
pub struct JobQueue {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Default)]
struct State {
    /// Jobs waiting, per collection, with the sequence number of their submission.
    lines: HashMap<String, VecDeque<(u64, String)>>,
    /// When each collection last had a job taken (a sequence number; never: 0).
    served: HashMap<String, u64>,
    seq: u64,
}

impl JobQueue {
    /// Queue `job_id` behind the other jobs of `collection`.
    pub fn submit(&self, collection: &str, job_id: &str) {
        {
            let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            s.seq += 1;
            let seq = s.seq;
            s.lines
                .entry(collection.to_string())
                .or_default()
                .push_back((seq, job_id.to_string()));
        }
        self.inner.ready.notify_one();
    }

    /// The next job: the first of the collection served least recently.
    pub fn try_next(&self) -> Option<String> {
        let mut s = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        let collection = s
            .lines
            .iter()
            .filter_map(|(c, line)| {
                let head = line.front()?.0;
                Some(((s.served.get(c).copied().unwrap_or(0), head), c))
            })
            .min()
            .map(|(_, c)| c.clone())?;
        s.seq += 1;
        let seq = s.seq;
        s.served.insert(collection.clone(), seq);
        let line = s.lines.get_mut(&collection)?;
        let (_, id) = line.pop_front()?;
        if line.is_empty() {
            s.lines.remove(&collection);
        }
        Some(id)
    }

    /// Wait for the next job.
    pub async fn next(&self) -> String {
        loop {
            // Registered before the check, so a submit in between is not missed.
            let notified = self.inner.ready.notified();
            if let Some(id) = self.try_next() {
                return id;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collections_take_turns() {
        let q = JobQueue::default();
        for i in 0..3 {
            q.submit("big", &format!("big{i}"));
        }
        q.submit("small", "small0");
        q.submit("other", "other0");
        q.submit("small", "small1");
        let order: Vec<String> = std::iter::from_fn(|| q.try_next()).collect();
        assert_eq!(
            order,
            ["big0", "small0", "other0", "big1", "small1", "big2"]
        );
        assert!(q.try_next().is_none());
    }

    #[test]
    fn a_collection_just_served_waits_for_the_others() {
        // big0 is taken (running) before the rest of its backlog and the other upload arrive:
        // the other upload still goes before big1.
        let q = JobQueue::default();
        q.submit("big", "big0");
        assert_eq!(q.try_next().as_deref(), Some("big0"));
        q.submit("big", "big1");
        q.submit("big", "big2");
        q.submit("quick", "quick0");
        assert_eq!(q.try_next().as_deref(), Some("quick0"));
        assert_eq!(q.try_next().as_deref(), Some("big1"));
        // Alone, a collection is served back to back.
        assert_eq!(q.try_next().as_deref(), Some("big2"));
    }

    #[tokio::test]
    async fn a_waiting_worker_wakes_for_a_submit() {
        let q = JobQueue::default();
        let q2 = q.clone();
        let waiter = tokio::spawn(async move { q2.next().await });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        q.submit("c", "j1");
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, "j1");
    }
}
