//! Outcomes handed to a consumer in the order it asks for them, with a bounded number of
//! jobs ahead: the feed of a dataset writer whose rows are made by remote workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::{Farm, FarmError, Job, Outcome};

/// Why a feed could not hand over an outcome.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeedError {
    /// The farm or its queue failed.
    #[error(transparent)]
    Farm(#[from] FarmError),
    /// The index was never part of this feed, or was taken already.
    #[error("item {index} is not in the queue")]
    NotQueued {
        /// The index asked for.
        index: u64,
    },
    /// An outcome arrived for a job this feed did not submit.
    #[error("unexpected result {id:?} in the queue")]
    Unexpected {
        /// The outcome's job id.
        id: String,
    },
}

/// Jobs for a list of indices, run by a [`Farm`] and handed back by index, in whatever
/// order the consumers ask. At most `window` jobs are submitted beyond the outcomes
/// already taken, so what waits in memory stays bounded however the workers race. Any
/// number of threads may call [`take`](Self::take): one polls the farm at a time, the
/// others wait for what it brings.
pub struct OrderedFeed<F> {
    farm: Mutex<F>,
    state: Mutex<FeedState>,
    arrived: Condvar,
    window: usize,
    job: Box<dyn Fn(u64) -> Job + Send + Sync>,
}

struct FeedState {
    todo: Vec<u64>,
    submitted: usize,
    received: usize,
    taken: usize,
    polling: bool,
    /// Submitted job ids and their indices.
    ids: HashMap<String, u64>,
    ready: HashMap<u64, Outcome>,
    /// Outcomes [`OrderedFeed::next_ready`] named, waiting for their [`OrderedFeed::take`].
    claimed: HashMap<u64, Outcome>,
    /// Indices handed out, by `next_ready` or `take`.
    handed: usize,
}

impl<F: Farm> OrderedFeed<F> {
    /// A feed of `todo`'s indices, each run as `job(index)` (ids must be unique), at most
    /// `window` (at least 1) ahead of the outcomes taken.
    pub fn new(
        farm: F,
        todo: Vec<u64>,
        window: usize,
        job: impl Fn(u64) -> Job + Send + Sync + 'static,
    ) -> Self {
        Self {
            farm: Mutex::new(farm),
            state: Mutex::new(FeedState {
                todo,
                submitted: 0,
                received: 0,
                taken: 0,
                polling: false,
                ids: HashMap::new(),
                ready: HashMap::new(),
                claimed: HashMap::new(),
                handed: 0,
            }),
            arrived: Condvar::new(),
            window: window.max(1),
            job: Box::new(job),
        }
    }

    /// Submits the jobs up to `window` past the outcomes already taken.
    fn submit_ahead(&self, st: &mut FeedState) -> Result<(), FeedError> {
        let want = (st.taken + self.window).min(st.todo.len());
        if st.submitted >= want {
            return Ok(());
        }
        let jobs: Vec<Job> = st.todo[st.submitted..want]
            .iter()
            .map(|&i| (self.job)(i))
            .collect();
        for (job, &i) in jobs.iter().zip(&st.todo[st.submitted..want]) {
            st.ids.insert(job.id.clone(), i);
        }
        self.farm.lock().expect("farm lock").submit(jobs)?;
        st.submitted = want;
        Ok(())
    }

    /// Waits for the outcome of `index`'s job. With [`next_ready`](Self::next_ready), take
    /// only the index it named to this thread.
    pub fn take(&self, index: u64) -> Result<Outcome, FeedError> {
        let mut st = self.state.lock().expect("feed lock");
        loop {
            let found = match st.claimed.remove(&index) {
                Some(o) => Some(o),
                None => st.ready.remove(&index).inspect(|_| st.handed += 1),
            };
            if let Some(o) = found {
                st.taken += 1;
                self.submit_ahead(&mut st)?;
                self.arrived.notify_all();
                return Ok(o);
            }
            self.submit_ahead(&mut st)?;
            let in_flight = st.submitted - st.received;
            if in_flight == 0 && st.ready.is_empty() {
                return Err(FeedError::NotQueued { index });
            }
            st = self.wait_or_poll(st)?;
        }
    }

    /// Waits for whichever outcome arrives first and returns its index, for [`take`]
    /// (Self::take) to collect; `None` once every index has been handed out. A consumer
    /// that may write in any order uses this: nothing waits in memory for an earlier index
    /// whose job is slower, so the window can be as wide as the workers are many. Returns
    /// `None` too, within half a second, once `stop` is set (the consumer gave up).
    pub fn next_ready(&self, stop: &AtomicBool) -> Result<Option<u64>, FeedError> {
        let mut st = self.state.lock().expect("feed lock");
        loop {
            if st.handed == st.todo.len() || stop.load(Ordering::Relaxed) {
                return Ok(None);
            }
            if let Some(&i) = st.ready.keys().min() {
                let o = st.ready.remove(&i).expect("present");
                st.claimed.insert(i, o);
                st.handed += 1;
                return Ok(Some(i));
            }
            self.submit_ahead(&mut st)?;
            st = self.wait_or_poll(st)?;
        }
    }

    /// Polls the farm once for an outcome, unless another thread is polling or nothing is
    /// in flight (what arrived must be taken before more is sent): then waits for them.
    fn wait_or_poll<'a>(
        &'a self,
        mut st: std::sync::MutexGuard<'a, FeedState>,
    ) -> Result<std::sync::MutexGuard<'a, FeedState>, FeedError> {
        let in_flight = st.submitted - st.received;
        if st.polling || in_flight == 0 {
            return Ok(self
                .arrived
                .wait_timeout(st, Duration::from_millis(500))
                .expect("feed lock")
                .0);
        }
        st.polling = true;
        drop(st);
        let next = self
            .farm
            .lock()
            .expect("farm lock")
            .next(Duration::from_millis(200));
        st = self.state.lock().expect("feed lock");
        st.polling = false;
        self.arrived.notify_all();
        if let Some(o) = next? {
            let i = st
                .ids
                .remove(&o.id)
                .ok_or_else(|| FeedError::Unexpected { id: o.id.clone() })?;
            st.received += 1;
            st.ready.insert(i, o);
        }
        Ok(st)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Context, JobError, LocalFarm, Metrics, Registry};

    fn farm() -> LocalFarm {
        let mut r = Registry::new();
        r.register(
            "square",
            |job: &Job, _: &Context| -> Result<Metrics, JobError> {
                // Later jobs finish first, so outcomes arrive out of order.
                let i = job.seed;
                std::thread::sleep(Duration::from_millis(20 * (8 - i % 8)));
                Ok(Metrics::from([("y".to_string(), (i * i) as f64)]))
            },
        )
        .unwrap();
        LocalFarm::new(r, 4)
    }

    #[test]
    fn hands_outcomes_over_in_the_order_asked() {
        let feed = OrderedFeed::new(farm(), (0..20).collect(), 3, |i| {
            Job::new(format!("sq-{i}"), "square", serde_json::json!({}), i)
        });
        for i in 0..20u64 {
            let o = feed.take(i).unwrap();
            assert_eq!(o.id, format!("sq-{i}"));
            assert_eq!(o.result.unwrap()["y"], (i * i) as f64);
            let st = feed.state.lock().unwrap();
            assert!(st.submitted - st.taken <= 3, "window kept");
        }
        assert!(matches!(
            feed.take(20),
            Err(FeedError::NotQueued { index: 20 })
        ));
    }

    #[test]
    fn hands_outcomes_over_as_they_arrive() {
        let feed = OrderedFeed::new(farm(), (0..16).collect(), 8, |i| {
            Job::new(format!("sq-{i}"), "square", serde_json::json!({}), i)
        });
        let mut order = Vec::new();
        let go_on = AtomicBool::new(false);
        while let Some(i) = feed.next_ready(&go_on).unwrap() {
            let o = feed.take(i).unwrap();
            assert_eq!(o.result.unwrap()["y"], (i * i) as f64);
            order.push(i);
            let st = feed.state.lock().unwrap();
            assert!(st.submitted - st.taken <= 8, "window kept");
        }
        // Later jobs of a batch finish first, so arrival order is not index order.
        assert_ne!(order, (0..16).collect::<Vec<_>>());
        order.sort_unstable();
        assert_eq!(order, (0..16).collect::<Vec<_>>());

        // A consumer that gave up is not kept waiting for outcomes still to come.
        let feed = OrderedFeed::new(farm(), (0..4).collect(), 4, |i| {
            Job::new(format!("sq-{i}"), "square", serde_json::json!({}), i)
        });
        assert_eq!(feed.next_ready(&AtomicBool::new(true)).unwrap(), None);
    }

    #[test]
    fn many_takers_share_one_feed() {
        let feed = OrderedFeed::new(farm(), (0..24).collect(), 4, |i| {
            Job::new(format!("sq-{i}"), "square", serde_json::json!({}), i)
        });
        let got: Vec<u64> = std::thread::scope(|s| {
            let takers: Vec<_> = (0..3u64)
                .map(|t| {
                    let feed = &feed;
                    s.spawn(move || {
                        (0..8u64)
                            .map(|k| {
                                let i = t * 8 + k;
                                feed.take(i).unwrap().result.unwrap()["y"] as u64
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            takers.into_iter().flat_map(|t| t.join().unwrap()).collect()
        });
        assert_eq!(got, (0..24u64).map(|i| i * i).collect::<Vec<_>>());
    }
}
