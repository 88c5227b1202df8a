//! pyo3 bindings of the bulk corpus tokenizer (issue 3): `CorpusJob` runs a job on a Rust thread
//! while Python polls its counters for a progress bar. Waiting releases the GIL. Knows nothing of
//! the pipeline's internals.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use pyo3::exceptions::PyRuntimeError;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::corpus::merge::{self, MergeConfig};
use crate::corpus::{self, CorpusConfig, Progress};
use crate::error::Error;

/// The crate-wide mapping (`impl From<Error> for PyErr` in py.rs; `CorpusError` lives there).
fn to_py(e: Error) -> PyErr {
    e.into()
}

type Outcome = std::result::Result<String, Error>;

/// What a job does: tokenize a corpus, or merge partitions (`merge-shards`).
#[derive(Clone)]
enum Task {
    Tokenize(CorpusConfig),
    Merge(MergeConfig),
}

impl Task {
    fn run(&self, progress: &Progress) -> crate::error::Result<corpus::Manifest> {
        match self {
            Task::Tokenize(cfg) => corpus::run(cfg, progress),
            Task::Merge(cfg) => merge::merge(cfg, progress),
        }
    }
}

/// A bulk tokenization job: `CorpusJob(config_json)`, then `start()`, poll `progress()` /
/// `wait(seconds)`, and take `result()` (the manifest as JSON text). `CorpusJob.merge(config_json)`
/// is a `merge-shards` job with the same interface.
#[pyclass(module = "baichuan._tokenizer")]
pub struct CorpusJob {
    task: Task,
    progress: Arc<Progress>,
    handle: Mutex<Option<JoinHandle<()>>>,
    started: std::sync::atomic::AtomicBool,
    outcome: Arc<Mutex<Option<Outcome>>>,
}

#[pymethods]
impl CorpusJob {
    #[new]
    fn new(config_json: &str) -> PyResult<Self> {
        let config = CorpusConfig::from_json(config_json).map_err(to_py)?;
        Ok(Self::with_task(Task::Tokenize(config)))
    }

    /// A job merging partitions: `{"inputs": [dirs], "output": dir, "overwrite": bool}`.
    #[staticmethod]
    fn merge(config_json: &str) -> PyResult<Self> {
        let config: MergeConfig = serde_json::from_str(config_json).map_err(|e| to_py(Error::Config(e.to_string())))?;
        Ok(Self::with_task(Task::Merge(config)))
    }

    /// Starts the job on a background thread.
    fn start(&self) -> PyResult<()> {
        let mut h = self.handle.lock().map_err(|_| PyRuntimeError::new_err("job state poisoned"))?;
        if self.started.swap(true, Ordering::SeqCst) {
            return Err(PyRuntimeError::new_err("the job was already started"));
        }
        let task = self.task.clone();
        let progress = self.progress.clone();
        let outcome = self.outcome.clone();
        let handle = std::thread::Builder::new()
            .name("baichuan-tokenize".into())
            .spawn(move || {
                let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    task.run(&progress).and_then(|m| {
                        serde_json::to_string(&m).map_err(|e| Error::Internal(e.to_string()))
                    })
                }));
                let r = r.unwrap_or_else(|_| Err(Error::Internal("the corpus job panicked".into())));
                if let Ok(mut o) = outcome.lock() {
                    *o = Some(r);
                }
            })
            .map_err(|e| PyRuntimeError::new_err(format!("cannot start a thread: {e}")))?;
        *h = Some(handle);
        Ok(())
    }

    /// Waits up to `timeout` seconds (GIL released); True when the job has ended.
    fn wait(&self, py: Python<'_>, timeout: f64) -> bool {
        let outcome = self.outcome.clone();
        let step = Duration::from_millis(20);
        let deadline = std::time::Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
        py.detach(move || loop {
            if outcome.lock().map(|o| o.is_some()).unwrap_or(true) {
                return true;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return false;
            }
            std::thread::sleep(step.min(deadline - now));
        })
    }

    /// Asks the job to stop at the next safe point; the output directory stays resumable.
    fn cancel(&self) {
        self.progress.cancel();
    }

    /// The live counters.
    fn progress<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = &self.progress;
        let d = PyDict::new(py);
        let g = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        d.set_item("raw_bytes_read", g(&p.raw_bytes_read))?;
        d.set_item("raw_bytes_total", g(&p.raw_bytes_total))?;
        d.set_item("raw_bytes_skipped", g(&p.raw_bytes_skipped))?;
        d.set_item("text_bytes", g(&p.text_bytes))?;
        d.set_item("documents", g(&p.documents))?;
        d.set_item("dropped", g(&p.dropped))?;
        d.set_item("tokens", g(&p.tokens))?;
        d.set_item("files_done", g(&p.files_done))?;
        d.set_item("files_total", g(&p.files_total))?;
        Ok(d)
    }

    /// The warnings given since the last call (one line each, naming the file): our own
    /// outputs found among the inputs and left out, files that look binary.
    fn take_warnings(&self) -> Vec<String> {
        self.progress.take_warnings()
    }

    /// The manifest (JSON text) once the job has ended; raises the job's error.
    fn result(&self, py: Python<'_>) -> PyResult<String> {
        if let Ok(mut h) = self.handle.lock() {
            if let Some(handle) = h.take() {
                py.detach(move || {
                    let _ = handle.join();
                });
            }
        }
        let mut o = self.outcome.lock().map_err(|_| PyRuntimeError::new_err("job state poisoned"))?;
        match o.take() {
            Some(Ok(m)) => {
                *o = Some(Ok(m.clone()));
                Ok(m)
            }
            Some(Err(e)) => Err(to_py(e)),
            None => Err(PyRuntimeError::new_err("the job was not started")),
        }
    }
}

impl CorpusJob {
    fn with_task(task: Task) -> Self {
        CorpusJob {
            task,
            progress: Arc::new(Progress::default()),
            handle: Mutex::new(None),
            started: std::sync::atomic::AtomicBool::new(false),
            outcome: Arc::new(Mutex::new(None)),
        }
    }
}

/// The files `baichuan tokenize` would read for `inputs`, in its order, leaving out our own
/// outputs (docs/formats.md): `(files, warnings)`, one warning line per directory left out.
/// `train-tokenizer` uses it so both commands read the same files.
#[pyfunction]
fn discover_inputs(inputs: Vec<String>) -> PyResult<(Vec<String>, Vec<String>)> {
    let d = crate::corpus::input::discover_excluding(&inputs, None).map_err(to_py)?;
    let files = d.files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    Ok((files, crate::corpus::input::skipped_warnings(&d.skipped)))
}

/// Checks a `--partition I/N` spec: `(I, N)`, or CorpusError naming it.
#[pyfunction]
fn parse_partition(spec: &str) -> PyResult<(usize, usize)> {
    corpus::parse_partition(spec).map_err(to_py)
}

fn parse_enum<T: serde::de::DeserializeOwned>(what: &str, value: &str) -> PyResult<T> {
    serde_json::from_value(serde_json::Value::String(value.to_string()))
        .map_err(|_| to_py(Error::Config(format!("{what} {value:?} is not one of the accepted values"))))
}

/// The documents of one input file exactly as `baichuan tokenize` reads them (the Rust reader,
/// `input::DocReader`): `DocumentReader(path, start=0, doc_per="line", input_format="auto",
/// text_field="text", invalid_utf8="ignore", strip=True, max_doc_bytes=256 MiB)`. `read(n)`
/// returns up to `n` `(start, text)` pairs (an empty list at the end of the file), reading and
/// decompressing with the GIL released; `start` is the document's decompressed byte offset, and a
/// reader opened at it reads that document again. `offset` is where the last document read ends.
#[pyclass(module = "baichuan._tokenizer")]
pub struct DocumentReader {
    inner: Mutex<crate::corpus::input::DocReader>,
}

#[pymethods]
impl DocumentReader {
    #[new]
    #[pyo3(signature = (path, start=0, *, doc_per="line", input_format="auto", text_field="text", invalid_utf8="ignore", strip=true, max_doc_bytes=256 << 20))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        start: u64,
        doc_per: &str,
        input_format: &str,
        text_field: &str,
        invalid_utf8: &str,
        strip: bool,
        max_doc_bytes: usize,
    ) -> PyResult<Self> {
        let opts = crate::corpus::input::DocOptions {
            doc_per: parse_enum("doc_per", doc_per)?,
            input_format: parse_enum("input_format", input_format)?,
            text_field: text_field.to_string(),
            invalid_utf8: parse_enum("invalid_utf8", invalid_utf8)?,
            strip,
            max_doc_bytes,
        };
        let r = py.detach(move || crate::corpus::input::DocReader::open(&path, start, opts)).map_err(to_py)?;
        Ok(DocumentReader { inner: Mutex::new(r) })
    }

    /// Up to `max_docs` documents as `(start, text)`; an empty list at the end of the file.
    fn read(&self, py: Python<'_>, max_docs: usize) -> PyResult<Vec<(u64, String)>> {
        let inner = &self.inner;
        let docs = py.detach(move || -> crate::error::Result<Vec<(u64, String)>> {
            let mut r = inner.lock().map_err(|_| Error::Internal("reader state poisoned".into()))?;
            let mut out = Vec::with_capacity(max_docs.min(4096));
            while out.len() < max_docs {
                match r.next_doc()? {
                    Some(d) => out.push((d.start, d.text)),
                    None => break,
                }
            }
            Ok(out)
        });
        docs.map_err(to_py)
    }

    /// The decompressed byte offset after the last document read.
    #[getter]
    fn offset(&self) -> PyResult<u64> {
        Ok(self.inner.lock().map_err(|_| PyRuntimeError::new_err("reader state poisoned"))?.offset)
    }

    /// JSONL lines skipped so far (not a JSON object with a string text field).
    #[getter]
    fn bad_json(&self) -> PyResult<u64> {
        Ok(self.inner.lock().map_err(|_| PyRuntimeError::new_err("reader state poisoned"))?.bad_json)
    }

    /// Warnings given since the last call (one line each, naming the file): it looks binary;
    /// JSONL lines were skipped (given at the end of the file).
    fn take_warnings(&self) -> PyResult<Vec<String>> {
        Ok(self.inner.lock().map_err(|_| PyRuntimeError::new_err("reader state poisoned"))?.take_warnings())
    }
}

/// Adds the corpus names to the native module (called from py.rs).
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<CorpusJob>()?;
    m.add_class::<DocumentReader>()?;
    m.add_function(wrap_pyfunction!(discover_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(parse_partition, m)?)?;
    Ok(())
}
