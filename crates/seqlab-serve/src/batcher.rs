//! Dynamic batching: requests that arrive close together run through the model as one batch.
//!
//! Each [`Batcher`] owns one dedicated OS thread that runs the model, so model work never
//! blocks the async runtime. Requests wait in a bounded queue; the worker takes the first
//! waiting request, then keeps collecting until it has `max_batch` requests or the first one
//! has waited `max_wait`, and hands the batch to [`BatchPredictor::predict_batch`]. A request
//! that waited while the previous batch ran is already past its deadline, so under load
//! batches fill from the backlog without extra waiting (the scheme of TensorFlow Serving's
//! and Triton's dynamic batchers).

use crate::metrics::Metrics;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

pub use seqlab_predict::BatchPredictor;

/// How requests are grouped and how many may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most requests in one model call (1 = no batching). Default 32.
    pub max_batch: usize,
    /// Longest time the first request of a batch waits for others. Default 5 ms.
    pub max_wait: Duration,
    /// Most requests waiting (not yet in a running batch); more are refused. Default 256.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_batch: 32,
            max_wait: Duration::from_millis(5),
            queue: 256,
        }
    }
}

impl BatchConfig {
    /// Checks the limits: `max_batch` and `queue` must be at least 1.
    pub fn new(max_batch: usize, max_wait: Duration, queue: usize) -> anyhow::Result<Self> {
        anyhow::ensure!(max_batch >= 1, "--max-batch must be at least 1 (1 turns batching off)");
        anyhow::ensure!(queue >= 1, "--queue must be at least 1");
        Ok(Self {
            max_batch,
            max_wait,
            queue,
        })
    }
}

/// Why a request got no answer from the model.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the server is shutting down")]
    Closed,
    /// The model failed for this request (or the whole batch); the error may be a
    /// [`crate::BadInput`].
    #[error("{0:#}")]
    Model(anyhow::Error),
}

struct Job<I, O> {
    input: I,
    reply: oneshot::Sender<Result<O, BatchError>>,
    enqueued: Instant,
}

struct State<I, O> {
    waiting: VecDeque<Job<I, O>>,
    closed: bool,
}

struct Shared<I, O> {
    state: Mutex<State<I, O>>,
    wake: Condvar,
    cfg: BatchConfig,
    name: String,
    metrics: Arc<Metrics>,
}

impl<I, O> Shared<I, O> {
    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        // A panic while holding the lock cannot leave the queue half-updated (every update is
        // one VecDeque call), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A bounded request queue in front of one model, with its worker thread.
pub struct Batcher<P: BatchPredictor> {
    shared: Arc<Shared<P::In, P::Out>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

impl<P: BatchPredictor> Batcher<P> {
    /// Starts the worker thread; `name` labels the metrics (`model` label) and the thread.
    pub fn start(name: &str, predictor: P, cfg: BatchConfig, metrics: Arc<Metrics>) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                waiting: VecDeque::new(),
                closed: false,
            }),
            wake: Condvar::new(),
            cfg,
            name: name.to_string(),
            metrics,
        });
        shared.metrics.set_queue_length(name, 0);
        let s = shared.clone();
        let worker = std::thread::Builder::new()
            .name(format!("serve-{name}"))
            .spawn(move || work(&s, &predictor))?;
        Ok(Self {
            shared,
            worker: Mutex::new(Some(worker)),
        })
    }

    /// Queues one request and waits for its answer. Refuses at once when the queue is full
    /// or the batcher is closed.
    pub async fn call(&self, input: P::In) -> Result<P::Out, BatchError> {
        let (tx, rx) = oneshot::channel();
        {
            let mut st = self.shared.lock();
            if st.closed {
                return Err(BatchError::Closed);
            }
            if st.waiting.len() >= self.shared.cfg.queue {
                return Err(BatchError::QueueFull(st.waiting.len()));
            }
            st.waiting.push_back(Job {
                input,
                reply: tx,
                enqueued: Instant::now(),
            });
            self.shared
                .metrics
                .set_queue_length(&self.shared.name, st.waiting.len());
        }
        self.shared.wake.notify_one();
        // The worker answers every job it takes, and drains the queue before it exits.
        rx.await.unwrap_or(Err(BatchError::Closed))
    }

    /// Requests waiting now (not counting a batch being computed).
    pub fn queued(&self) -> usize {
        self.shared.lock().waiting.len()
    }

    /// Refuses new requests, lets the worker answer everything already queued, and waits
    /// for it to finish.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_all();
        let handle = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = handle {
            // The worker catches the predictor's panics, so join fails only on a bug here.
            let _ = h.join();
        }
    }
}

impl<P: BatchPredictor> Drop for Batcher<P> {
    fn drop(&mut self) {
        self.close();
    }
}

/// The worker: collect a batch, run it, answer, until closed and drained.
fn work<P: BatchPredictor>(sh: &Shared<P::In, P::Out>, predictor: &P) {
    loop {
        let jobs = {
            let mut st = sh.lock();
            while st.waiting.is_empty() && !st.closed {
                st = sh.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.waiting.is_empty() {
                return; // closed and drained
            }
            let deadline = st.waiting[0].enqueued + sh.cfg.max_wait;
            while st.waiting.len() < sh.cfg.max_batch && !st.closed {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                st = sh
                    .wake
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            let n = st.waiting.len().min(sh.cfg.max_batch);
            let jobs: Vec<Job<P::In, P::Out>> = st.waiting.drain(..n).collect();
            sh.metrics.set_queue_length(&sh.name, st.waiting.len());
            jobs
        };
        // A client that hung up needs no answer: skip its work.
        let (jobs, gone): (Vec<_>, Vec<_>) = jobs.into_iter().partition(|j| !j.reply.is_closed());
        drop(gone);
        if jobs.is_empty() {
            continue;
        }
        sh.metrics.observe_batch(&sh.name, jobs.len());
        let (inputs, replies): (Vec<P::In>, Vec<_>) = jobs.into_iter().map(|j| (j.input, j.reply)).unzip();
        let n = inputs.len();
        match catch_unwind(AssertUnwindSafe(|| predictor.predict_batch(inputs))) {
            Ok(outs) if outs.len() == n => {
                for (reply, out) in replies.into_iter().zip(outs) {
                    let _ = reply.send(out.map_err(BatchError::Model));
                }
            }
            Ok(outs) => {
                let msg = format!("the model returned {} answers for a batch of {n}", outs.len());
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Model(anyhow::anyhow!("{msg}"))));
                }
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                for reply in replies {
                    let _ = reply.send(Err(BatchError::Model(anyhow::anyhow!("the model panicked: {what}"))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Doubles numbers; records batch sizes; sleeps a little to let a backlog form.
    struct Doubler {
        sizes: Arc<Mutex<Vec<usize>>>,
        sleep: Duration,
    }

    impl BatchPredictor for Doubler {
        type In = i64;
        type Out = i64;
        fn predict_batch(&self, inputs: Vec<i64>) -> Vec<anyhow::Result<i64>> {
            self.sizes.lock().unwrap().push(inputs.len());
            std::thread::sleep(self.sleep);
            inputs
                .into_iter()
                .map(|x| {
                    if x < 0 {
                        anyhow::bail!("negative input {x}")
                    }
                    if x == 666 {
                        panic!("the number of the beast")
                    }
                    Ok(2 * x)
                })
                .collect()
        }
    }

    fn doubler(sleep_ms: u64) -> (Doubler, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        (
            Doubler {
                sizes: sizes.clone(),
                sleep: Duration::from_millis(sleep_ms),
            },
            sizes,
        )
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_answers() {
        let (p, sizes) = doubler(20);
        let cfg = BatchConfig::new(8, Duration::from_millis(50), 100).unwrap();
        let b = Arc::new(Batcher::start("t", p, cfg, Arc::new(Metrics::default())).unwrap());
        let got: Vec<i64> = rt().block_on(async {
            let hs: Vec<_> = (0..40)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move { b.call(i).await.unwrap() })
                })
                .collect();
            let mut v = Vec::new();
            for h in hs {
                v.push(h.await.unwrap());
            }
            v
        });
        assert_eq!(got, (0..40).map(|i| 2 * i).collect::<Vec<_>>());
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 40);
        assert!(sizes.iter().all(|&s| s <= 8), "{sizes:?}");
        assert!(sizes.iter().any(|&s| s > 1), "no batching happened: {sizes:?}");
    }

    #[test]
    fn max_batch_one_never_batches() {
        let (p, sizes) = doubler(1);
        let cfg = BatchConfig::new(1, Duration::from_millis(50), 100).unwrap();
        let b = Arc::new(Batcher::start("t", p, cfg, Arc::new(Metrics::default())).unwrap());
        rt().block_on(async {
            let hs: Vec<_> = (0..10)
                .map(|i| {
                    let b = b.clone();
                    tokio::spawn(async move { b.call(i).await.unwrap() })
                })
                .collect();
            for h in hs {
                h.await.unwrap();
            }
        });
        assert!(sizes.lock().unwrap().iter().all(|&s| s == 1));
    }

    #[test]
    fn errors_and_panics_stay_with_their_requests() {
        let (p, _) = doubler(0);
        let b = Batcher::start("t", p, BatchConfig::default(), Arc::new(Metrics::default())).unwrap();
        rt().block_on(async {
            let err = b.call(-3).await.unwrap_err().to_string();
            assert!(err.contains("negative input -3"), "{err}");
            let err = b.call(666).await.unwrap_err().to_string();
            assert!(err.contains("panicked") && err.contains("beast"), "{err}");
            // The worker survives a panic.
            assert_eq!(b.call(4).await.unwrap(), 8);
        });
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_close_drains() {
        let (p, sizes) = doubler(200);
        let cfg = BatchConfig::new(1, Duration::ZERO, 2).unwrap();
        let b = Arc::new(Batcher::start("t", p, cfg, Arc::new(Metrics::default())).unwrap());
        let refused = Arc::new(AtomicUsize::new(0));
        let ok = rt().block_on(async {
            let hs: Vec<_> = (0..10)
                .map(|i| {
                    let (b, refused) = (b.clone(), refused.clone());
                    tokio::spawn(async move {
                        match b.call(i).await {
                            Ok(v) => Some(v),
                            Err(BatchError::QueueFull(n)) => {
                                assert_eq!(n, 2);
                                refused.fetch_add(1, Ordering::SeqCst);
                                None
                            }
                            Err(e) => panic!("{e}"),
                        }
                    })
                })
                .collect();
            let mut ok = 0;
            for h in hs {
                ok += h.await.unwrap().is_some() as usize;
            }
            ok
        });
        // One running + two waiting at most while the others arrive.
        assert!((2..=4).contains(&ok), "{ok} answered");
        assert_eq!(ok + refused.load(Ordering::SeqCst), 10);
        assert_eq!(sizes.lock().unwrap().len(), ok);
        b.close();
        let err = rt().block_on(b.call(1)).unwrap_err();
        assert!(matches!(err, BatchError::Closed), "{err}");
    }

    #[test]
    fn config_rejects_zero() {
        assert!(BatchConfig::new(0, Duration::ZERO, 1).is_err());
        assert!(BatchConfig::new(1, Duration::ZERO, 0).is_err());
    }
}
