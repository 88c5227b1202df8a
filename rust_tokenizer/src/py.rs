//! pyo3 bindings: the private module `baichuan._tokenizer`. Knows nothing of BPE; every encode
//! call releases the GIL. (Issue 2 fills this in.)

use pyo3::prelude::*;

pyo3::create_exception!(_tokenizer, TokenizerError, pyo3::exceptions::PyValueError);

#[pymodule]
fn _tokenizer(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("TokenizerError", m.py().get_type::<TokenizerError>())?;
    Ok(())
}
