//! One ONNX Runtime session run from several threads at once, so a model
//! served by N runners holds one copy of its weights and arenas instead of
//! N. ONNX Runtime documents `Run` as safe to call concurrently on one
//! session (the CPU provider this node uses included); the `ort` crate
//! still asks for `&mut Session` to run, so the call is made here through
//! the C API it exposes. Everything else about the session stays `ort`'s.
//!
//! Measured on EfficientNet-Lite0 (`MALLOC_MMAP_THRESHOLD_=131072
//! bench/ort-session-memory.py`, docs/models.md): one session run by two
//! threads made 252 runs a second against 236 for two sessions, and cost
//! 48 MiB instead of 69.

// The one place sedge calls into C itself: `Run` on a shared session.
#![allow(unsafe_code)]

use std::ffi::{c_char, CStr, CString};
use std::ptr::{self, NonNull};

use ort::session::{RunOptions, Session};
use ort::sys::OrtValue;
use ort::value::DynValue;
use ort::AsPointer;

/// A session whose runs may overlap.
pub struct SharedSession {
    session: Session,
    /// Every output, in the model's order, as `Run` takes them.
    outputs: Vec<CString>,
}

impl SharedSession {
    pub fn new(session: Session) -> Result<Self, String> {
        let outputs = session
            .outputs()
            .iter()
            .map(|o| CString::new(o.name()).map_err(|_| format!("output {:?} has a NUL in its name", o.name())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { session, outputs })
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Runs the named inputs; answers every output in the model's order.
    /// Safe to call from many threads at once.
    pub fn run(&self, inputs: &[(String, DynValue)]) -> Result<Vec<DynValue>, String> {
        let refs: Vec<(&str, &dyn AsPointer<Sys = OrtValue>)> =
            inputs.iter().map(|(n, v)| (n.as_str(), v as &dyn AsPointer<Sys = OrtValue>)).collect();
        self.run_with(&refs, None)
    }

    /// [`Self::run`] of values owned or borrowed (views of the caller's
    /// buffers), with run options (the run's own settings).
    pub fn run_with(
        &self,
        inputs: &[(&str, &dyn AsPointer<Sys = OrtValue>)],
        options: Option<&RunOptions>,
    ) -> Result<Vec<DynValue>, String> {
        let names = inputs
            .iter()
            .map(|(n, _)| CString::new(*n).map_err(|_| format!("input {n:?} has a NUL in its name")))
            .collect::<Result<Vec<_>, _>>()?;
        let name_ptrs: Vec<*const c_char> = names.iter().map(|c| c.as_ptr()).collect();
        let value_ptrs: Vec<*const ort::sys::OrtValue> = inputs.iter().map(|(_, v)| v.ptr()).collect();
        let output_ptrs: Vec<*const c_char> = self.outputs.iter().map(|c| c.as_ptr()).collect();
        let mut outputs: Vec<*mut ort::sys::OrtValue> = vec![ptr::null_mut(); output_ptrs.len()];
        let api = ort::api();
        // SAFETY: every pointer is valid for the call: the session lives in
        // `self`, the names in `names` and `self.outputs`, the input values
        // in `inputs`, and `outputs` has room for one value per output
        // name; the options, when given, live in the caller's borrow. ONNX
        // Runtime allows concurrent `Run` on one session; the inputs are
        // only read.
        let status = unsafe {
            (api.Run)(
                self.session.ptr().cast_mut(),
                options.map_or(ptr::null(), |o| o.ptr()),
                name_ptrs.as_ptr(),
                value_ptrs.as_ptr(),
                value_ptrs.len(),
                output_ptrs.as_ptr(),
                output_ptrs.len(),
                outputs.as_mut_ptr(),
            )
        };
        if !status.0.is_null() {
            // SAFETY: a non-null status is ONNX Runtime's error, ours to read and release once.
            let message = unsafe { CStr::from_ptr((api.GetErrorMessage)(status.0)) }.to_string_lossy().into_owned();
            // SAFETY: as above; outputs it made before failing are ours to release.
            unsafe {
                (api.ReleaseStatus)(status.0);
                for value in outputs.into_iter().filter(|p| !p.is_null()) {
                    (api.ReleaseValue)(value);
                }
            }
            return Err(message);
        }
        let mut values = Vec::with_capacity(outputs.len());
        let mut missing = false;
        for value in outputs {
            match NonNull::new(value) {
                // SAFETY: a value `Run` made is ours; the session's allocator made it.
                Some(v) => values.push(unsafe { DynValue::from_ptr(v, Some(self.session.allocator())) }),
                None => missing = true,
            }
        }
        if missing {
            return Err("ONNX Runtime gave no value for an output".to_owned());
        }
        Ok(values)
    }
}
