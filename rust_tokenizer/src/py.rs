//! pyo3 bindings: the private module `baichuan._tokenizer`. Knows nothing of BPE; every encode
//! call releases the GIL, and no Rust panic crosses into Python (encode paths run under
//! `catch_unwind` and a panic becomes `TokenizerError`).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::Arc;

use pyo3::exceptions::{PyFileNotFoundError, PyIndexError, PyOSError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::{PyBackedBytes, PyBackedStr};
use pyo3::types::{PyBytes, PyList, PyString, PyTuple};

use crate::batch::{schedule, threads_for, IdBlock};
use crate::error::Error;
use crate::tokenizer::Tokenizer;

pyo3::create_exception!(_tokenizer, TokenizerError, pyo3::exceptions::PyValueError);
// A corpus job's own errors (inputs, outputs, options, cancellation); a `TokenizerError`, so
// `except TokenizerError` also catches them.
pyo3::create_exception!(_tokenizer, CorpusError, TokenizerError);

/// The one mapping of the crate's errors to Python exceptions, for every binding (`Tokenizer`
/// and the corpus job alike): a missing file is `FileNotFoundError` and other I/O errors
/// `OSError` (messages name the path), a bad model `TokenizerError`, an id out of range
/// `IndexError`, a corpus job's inputs, outputs, options or cancellation `CorpusError`.
impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        let msg = e.to_string();
        match e {
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            Error::Io { .. } => PyOSError::new_err(msg),
            Error::InvalidModel { .. } | Error::UnsupportedModelType { .. } => {
                TokenizerError::new_err(msg)
            }
            Error::IdOutOfRange { .. } => PyIndexError::new_err(msg),
            Error::Input { .. } | Error::Output { .. } | Error::Config(_) | Error::Cancelled => {
                CorpusError::new_err(msg)
            }
            Error::Internal(_) => TokenizerError::new_err(msg),
        }
    }
}

/// Runs `f` and turns a panic into `TokenizerError` (there should be none; this is the fence).
fn guarded<T>(what: &str, f: impl FnOnce() -> T) -> PyResult<T> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let detail = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        TokenizerError::new_err(format!("internal error in {what}: {detail}"))
    })
}

/// A Python `str` or `bytes` held without copying.
enum Text {
    Str(PyBackedStr),
    Bytes(PyBackedBytes),
}

impl AsRef<[u8]> for Text {
    fn as_ref(&self) -> &[u8] {
        match self {
            Text::Str(s) => s.as_bytes(),
            Text::Bytes(b) => b,
        }
    }
}

/// Texts of 4 GiB or more are refused (as sentencepiece's parallel API does): positions are u32.
const MAX_TEXT_BYTES: usize = u32::MAX as usize;

fn text_arg(obj: &Bound<'_, PyAny>) -> PyResult<Text> {
    let t = text_arg_any(obj)?;
    let n = t.as_ref().len();
    if n >= MAX_TEXT_BYTES {
        return Err(TokenizerError::new_err(format!(
            "input of {n} bytes is too long (limit: 4 GiB)"
        )));
    }
    Ok(t)
}

fn text_arg_any(obj: &Bound<'_, PyAny>) -> PyResult<Text> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Text::Str(s.extract::<PyBackedStr>()?));
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Text::Bytes(b.extract::<PyBackedBytes>()?));
    }
    Err(PyTypeError::new_err(format!(
        "input must be str or bytes, not {}",
        obj.get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default()
    )))
}

/// The bytes of item `i` of a batch tuple: a `str`'s UTF-8 (CPython caches it in the object,
/// so the slice lives as long as the str) or a `bytes` object's contents.
fn batch_text<'t>(batch: &'t Bound<'_, PyTuple>, i: usize) -> PyResult<&'t [u8]> {
    let item = batch.get_borrowed_item(i)?;
    let (ptr, len) = if let Ok(s) = item.cast::<PyString>() {
        let mut len: pyo3::ffi::Py_ssize_t = 0;
        // SAFETY: `s` is a live str (the tuple holds it); the call returns NULL with an
        // exception set (e.g. a lone surrogate) or a buffer owned by `s`.
        let p = unsafe { pyo3::ffi::PyUnicode_AsUTF8AndSize(s.as_ptr(), &mut len) };
        if p.is_null() {
            return Err(PyErr::fetch(batch.py()));
        }
        (p.cast::<u8>(), len)
    } else if let Ok(b) = item.cast::<PyBytes>() {
        // SAFETY: `b` is a live bytes object; both calls only read it.
        unsafe {
            (
                pyo3::ffi::PyBytes_AsString(b.as_ptr()).cast::<u8>().cast_const(),
                pyo3::ffi::PyBytes_Size(b.as_ptr()),
            )
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "input must be str or bytes, not {}",
            item.get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        )));
    };
    let len = usize::try_from(len).map_err(|_| PyErr::fetch(batch.py()))?;
    if len >= MAX_TEXT_BYTES {
        return Err(TokenizerError::new_err(format!(
            "input of {len} bytes is too long (limit: 4 GiB)"
        )));
    }
    // SAFETY: `ptr` points to `len` initialised bytes owned by an object that the tuple keeps
    // alive for at least `'t`; str and bytes are immutable.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// The bytes of every item of a batch tuple (see [`batch_text`]).
fn batch_texts<'t>(batch: &'t Bound<'_, PyTuple>) -> PyResult<Vec<&'t [u8]>> {
    (0..batch.len()).map(|i| batch_text(batch, i)).collect()
}

/// A new list of `len` slots, each `None` until `PyList_SetItem` fills it (not NULL: the list is
/// reachable through `gc.get_objects()` from other threads while the GIL is released).
fn new_list(py: Python<'_>, len: usize) -> PyResult<Bound<'_, PyList>> {
    let n = pyo3::ffi::Py_ssize_t::try_from(len)
        .map_err(|_| TokenizerError::new_err("too many texts for one list"))?;
    // SAFETY: GIL held; `PyList_New` returns a new reference or NULL with an exception set;
    // each slot gets its own new reference to `None`, which `PyList_SetItem` steals.
    unsafe {
        let list = pyo3::ffi::PyList_New(n);
        if list.is_null() {
            return Err(PyErr::fetch(py));
        }
        let list = Bound::from_owned_ptr(py, list);
        let none = pyo3::ffi::Py_None();
        for k in 0..n {
            pyo3::ffi::Py_IncRef(none);
            pyo3::ffi::PyList_SetItem(list.as_ptr(), k, none);
        }
        Ok(list.cast_into_unchecked())
    }
}

/// Stores a new reference to `obj` in slot `k` of the brand-new list `list` (fresh from
/// `PyList_New`: the slot is still NULL).
///
/// # Safety
/// The GIL is held, `list` is a list made by `PyList_New` that no other code has seen yet,
/// `k < len(list)`, slot `k` has not been filled, and `obj` is a live object.
#[inline(always)]
unsafe fn set_new_item(
    list: *mut pyo3::ffi::PyObject,
    k: pyo3::ffi::Py_ssize_t,
    obj: *mut pyo3::ffi::PyObject,
) {
    // Version-specific build: CPython's inline macros (no call into libpython per id).
    // SAFETY: the caller's contract; `PyList_SET_ITEM` steals the reference made by `Py_INCREF`
    // and may only fill a NULL slot of a new list, which is what the contract says slot `k` is.
    #[cfg(not(feature = "abi3"))]
    unsafe {
        pyo3::ffi::Py_INCREF(obj);
        pyo3::ffi::PyList_SET_ITEM(list, k, obj);
    }
    // Stable ABI: the macros are not available; the function forms do the same.
    // SAFETY: the caller's contract; `PyList_SetItem` steals the reference made by `Py_IncRef`.
    #[cfg(feature = "abi3")]
    unsafe {
        pyo3::ffi::Py_IncRef(obj);
        pyo3::ffi::PyList_SetItem(list, k, obj);
    }
}

fn threads_arg(n: Option<i64>) -> Option<usize> {
    match n {
        None => None,
        Some(n) if n < 0 => None,
        Some(n) => Some(n.clamp(1, 1024) as usize),
    }
}

fn id_arg(tok: &Tokenizer, id: i64) -> PyResult<u32> {
    if id < 0 || id >= tok.vocab_size() as i64 {
        return Err(Error::IdOutOfRange {
            id,
            vocab_size: tok.vocab_size(),
        }
        .into());
    }
    Ok(id as u32)
}

fn opt_id(x: Option<u32>) -> i64 {
    x.map_or(-1, i64::from)
}

/// A loaded SentencePiece BPE model (see `baichuan.Tokenizer` for the documented wrapper).
#[pyclass(frozen, module = "baichuan._tokenizer", name = "Tokenizer")]
struct PyTokenizer {
    inner: Arc<Tokenizer>,
    origin: String,
    /// One Python int per id, shared by every returned list (no int allocation per id).
    ints: Vec<Py<PyAny>>,
}

impl PyTokenizer {
    fn new(py: Python<'_>, tok: Tokenizer, origin: String) -> PyResult<Self> {
        let ints = (0..tok.vocab_size() as u64)
            .map(|i| Ok(i.into_pyobject(py)?.into_any().unbind()))
            .collect::<PyResult<Vec<_>>>()?;
        Ok(PyTokenizer {
            inner: Arc::new(tok),
            origin,
            ints,
        })
    }

    /// Puts the id lists of block `b` at `out[first..first + b.ends.len()]`.
    fn fill<'py>(
        &self,
        py: Python<'py>,
        out: &Bound<'py, PyList>,
        first: usize,
        b: &IdBlock,
    ) -> PyResult<()> {
        if first + b.ends.len() > out.len() {
            return Err(TokenizerError::new_err(
                "internal error in encode_batch: block out of range",
            ));
        }
        for (k, ids) in b.iter().enumerate() {
            let l = self.id_list(py, ids)?;
            // SAFETY: GIL held; `out` is a list of `out.len()` slots and the index is in range
            // (checked above); `PyList_SetItem` steals the new reference made by `into_ptr`.
            let rc = unsafe {
                pyo3::ffi::PyList_SetItem(
                    out.as_ptr(),
                    (first + k) as pyo3::ffi::Py_ssize_t,
                    l.into_ptr(),
                )
            };
            if rc != 0 {
                return Err(PyErr::fetch(py));
            }
        }
        Ok(())
    }

    fn id_list<'py>(&self, py: Python<'py>, ids: &[u32]) -> PyResult<Bound<'py, PyList>> {
        // Straight through the C API: one new reference to a cached int per slot. (pyo3's
        // generic `PyList::new` costs a few percent more per id here; see `set_new_item`.)
        let len = pyo3::ffi::Py_ssize_t::try_from(ids.len())
            .map_err(|_| TokenizerError::new_err("too many ids for one list"))?;
        // SAFETY: we hold the GIL (`py`) and release it nowhere in this block; `PyList_New`
        // returns a new reference or NULL with an exception set; the list is seen by no other
        // code until it is returned, and each slot `k < len` is filled once; every id is
        // < vocab_size (they come from this tokenizer), so each `ints` entry is a live int.
        unsafe {
            let list = pyo3::ffi::PyList_New(len);
            if list.is_null() {
                return Err(PyErr::fetch(py));
            }
            for (k, &id) in ids.iter().enumerate() {
                let obj = self.ints[id as usize].as_ptr();
                set_new_item(list, k as pyo3::ffi::Py_ssize_t, obj);
            }
            Ok(Bound::from_owned_ptr(py, list).cast_into_unchecked())
        }
    }
}

#[pymethods]
impl PyTokenizer {
    /// Reads a SentencePiece `.model` file.
    #[staticmethod]
    fn from_file(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let origin = path.display().to_string();
        let tok = py.detach(|| guarded("from_file", || Tokenizer::from_file(&path)))??;
        PyTokenizer::new(py, tok, origin)
    }

    /// Parses a serialized `ModelProto`; `origin` names it in errors.
    #[staticmethod]
    #[pyo3(signature = (data, origin = "<bytes>".to_string()))]
    fn from_bytes(py: Python<'_>, data: PyBackedBytes, origin: String) -> PyResult<Self> {
        let tok =
            py.detach(|| guarded("from_bytes", || Tokenizer::from_bytes(&data, &origin)))??;
        PyTokenizer::new(py, tok, origin)
    }

    fn encode<'py>(
        &self,
        py: Python<'py>,
        text: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyList>> {
        let t = text_arg(text)?;
        let tok = &self.inner;
        let ids = py.detach(|| guarded("encode", || tok.encode_bytes(t.as_ref())))?;
        self.id_list(py, &ids)
    }

    /// `texts` must be a list (the Python wrapper makes one) of `str` / `bytes`.
    #[pyo3(signature = (texts, num_threads = None))]
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyList>,
        num_threads: Option<i64>,
    ) -> PyResult<Bound<'py, PyList>> {
        // A tuple snapshot: the caller's list may change while the GIL is released; the tuple's
        // references keep every text (and the UTF-8 buffer CPython caches in a str) alive.
        let batch = texts.to_tuple();
        let ts = batch_texts(&batch)?;
        let tok = &self.inner;
        let n = threads_arg(num_threads);
        let out = new_list(py, ts.len())?;
        // The batch scheduler (batch.rs): `threads - 1` pool workers encode blocks from the back
        // of the batch while this thread encodes blocks from the front (GIL released) and,
        // between its blocks, turns every finished block into Python lists placed straight at
        // their positions in `out`. So `threads` threads share the cores (no third thread
        // competing for them with the conversion), each encodes a long run of consecutive texts,
        // and only the conversion of the last blocks is serial. One thread (or a small batch):
        // this thread alone, without spawning anything. See docs/performance.md.
        let mut filled = 0usize;
        guarded("encode_batch", || {
            schedule(
                ts.len(),
                threads_for(n),
                |r| tok.encode_block(&ts[r]),
                |step| py.detach(step),
                |first, b| {
                    self.fill(py, &out, first, &b)?;
                    filled += b.ends.len();
                    Ok::<(), PyErr>(())
                },
            )
        })??;
        if filled != ts.len() {
            return Err(TokenizerError::new_err(
                "internal error in encode_batch: blocks missing",
            ));
        }
        Ok(out)
    }

    /// All ids concatenated (little-endian u32 bytes) and `len(texts) + 1` offsets
    /// (little-endian i64 bytes); the Python wrapper views them as numpy arrays.
    #[pyo3(signature = (texts, num_threads = None))]
    fn encode_batch_flat<'py>(
        &self,
        py: Python<'py>,
        texts: &Bound<'py, PyList>,
        num_threads: Option<i64>,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let batch = texts.to_tuple(); // a snapshot that keeps the texts alive (see encode_batch)
        let ts = batch_texts(&batch)?;
        let tok = &self.inner;
        let n = threads_arg(num_threads);
        let (ids, offsets) = py.detach(|| {
            guarded("encode_batch_flat", || {
                let (ids, offs) = tok.encode_batch_flat(&ts, n);
                let ids: Vec<u8> = ids.iter().flat_map(|x| x.to_le_bytes()).collect();
                let offs: Vec<u8> = offs
                    .iter()
                    .flat_map(|&x| (x as i64).to_le_bytes())
                    .collect();
                (ids, offs)
            })
        })?;
        Ok((PyBytes::new(py, &ids), PyBytes::new(py, &offsets)))
    }

    fn encode_as_pieces(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let t = text_arg(text)?;
        let tok = &self.inner;
        py.detach(|| guarded("encode_as_pieces", || tok.encode_as_pieces(t.as_ref())))
    }

    fn normalize(&self, py: Python<'_>, text: &Bound<'_, PyAny>) -> PyResult<String> {
        let t = text_arg(text)?;
        let tok = &self.inner;
        let v = py.detach(|| guarded("normalize", || tok.normalize(t.as_ref())))?;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }

    fn decode(&self, py: Python<'_>, ids: Vec<i64>) -> PyResult<String> {
        let tok = &self.inner;
        let ids = ids
            .iter()
            .map(|&i| id_arg(tok, i))
            .collect::<PyResult<Vec<u32>>>()?;
        Ok(py.detach(|| guarded("decode", || tok.decode(&ids)))??)
    }

    #[pyo3(signature = (seqs, num_threads = None))]
    fn decode_batch(
        &self,
        py: Python<'_>,
        seqs: Vec<Vec<i64>>,
        num_threads: Option<i64>,
    ) -> PyResult<Vec<String>> {
        let tok = &self.inner;
        let seqs = seqs
            .iter()
            .map(|s| {
                s.iter()
                    .map(|&i| id_arg(tok, i))
                    .collect::<PyResult<Vec<u32>>>()
            })
            .collect::<PyResult<Vec<Vec<u32>>>>()?;
        let n = threads_arg(num_threads);
        Ok(py.detach(|| guarded("decode_batch", || tok.decode_batch(&seqs, n)))??)
    }

    fn decode_to_bytes<'py>(
        &self,
        py: Python<'py>,
        ids: Vec<i64>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let tok = &self.inner;
        let ids = ids
            .iter()
            .map(|&i| id_arg(tok, i))
            .collect::<PyResult<Vec<u32>>>()?;
        let v = py.detach(|| guarded("decode", || tok.decode_to_bytes(&ids)))??;
        Ok(PyBytes::new(py, &v))
    }

    fn id_to_piece(&self, id: i64) -> PyResult<String> {
        let id = id_arg(&self.inner, id)?;
        Ok(self.inner.id_to_piece(id)?)
    }

    fn piece_to_id(&self, piece: &str) -> i64 {
        opt_id(self.inner.piece_to_id(piece))
    }

    fn score(&self, id: i64) -> PyResult<f32> {
        let id = id_arg(&self.inner, id)?;
        self.inner
            .score(id)
            .ok_or_else(|| PyValueError::new_err("no score"))
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    #[getter]
    fn bos_id(&self) -> i64 {
        opt_id(self.inner.bos_id())
    }
    #[getter]
    fn eos_id(&self) -> i64 {
        opt_id(self.inner.eos_id())
    }
    #[getter]
    fn unk_id(&self) -> i64 {
        opt_id(self.inner.unk_id())
    }
    #[getter]
    fn pad_id(&self) -> i64 {
        opt_id(self.inner.pad_id())
    }
    #[getter]
    fn origin(&self) -> &str {
        &self.origin
    }
    #[getter]
    fn uses_chunking(&self) -> bool {
        self.inner.uses_chunking()
    }

    fn __len__(&self) -> usize {
        self.inner.vocab_size()
    }

    fn __repr__(&self) -> String {
        format!(
            "Tokenizer(origin={:?}, vocab_size={})",
            self.origin,
            self.inner.vocab_size()
        )
    }
}

#[pymodule]
fn _tokenizer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TokenizerError", m.py().get_type::<TokenizerError>())?;
    m.add("CorpusError", m.py().get_type::<CorpusError>())?;
    m.add_class::<PyTokenizer>()?;
    crate::py_corpus::register(m)?; // bulk corpus tokenization (issue 3)
    Ok(())
}
