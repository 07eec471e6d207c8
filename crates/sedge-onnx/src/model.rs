//! A loaded model: one session run by several runners side by side (each
//! run with its own intra-op threads), so the weights are held once, and
//! what it declares for inputs and outputs. ONNX Runtime is found at run time: `ORT_DYLIB_PATH`, else the
//! `onnxruntime` package of the node's Python.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ort::session::{RunOptions, Session};
use ort::value::TensorRef;
use ort::value::{DynValue, TensorElementType, ValueType};
use ort::AsPointer;

use crate::shared::SharedSession;
use crate::tensor::{DType, Data, F32Bytes, Tensor, TensorInfo};
use crate::OnnxError;

/// The ONNX Runtime environment, made once the library is found; a failure
/// is not kept, so installing the library later works without a restart.
static ENVIRONMENT: Mutex<Option<ort::environment::Environment>> = Mutex::new(None);

const HOW_TO_GET_IT: &str = "install it into the node's Python (`pip install onnxruntime`, \
     as scripts/setup.sh does) or set ORT_DYLIB_PATH to a libonnxruntime.so";

/// Where libonnxruntime is: `ORT_DYLIB_PATH`, else inside the `onnxruntime`
/// package that `python` imports.
pub fn find_library(python: &str) -> Result<PathBuf, OnnxError> {
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(OnnxError::NoRuntime(format!(
                "ORT_DYLIB_PATH names {}, which is not a file: point it at a libonnxruntime.so, or unset it and \
                 install onnxruntime into the node's Python (`pip install onnxruntime`, as scripts/setup.sh does)",
                path.display()
            )))
        };
    }
    let script = "import os, onnxruntime; print(os.path.join(os.path.dirname(onnxruntime.__file__), 'capi'))";
    let out =
        std::process::Command::new(python).args(["-c", script]).stdin(std::process::Stdio::null()).output().map_err(
            |e| OnnxError::NoRuntime(format!("cannot run {python} to find onnxruntime ({e}); {HOW_TO_GET_IT}")),
        )?;
    if !out.status.success() {
        return Err(OnnxError::NoRuntime(format!("{python} has no onnxruntime package; {HOW_TO_GET_IT}")));
    }
    let capi = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let mut found: Vec<PathBuf> = std::fs::read_dir(&capi)
        .map_err(|e| OnnxError::NoRuntime(format!("cannot read {}: {e}", capi.display())))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libonnxruntime.so")))
        .collect();
    // The versioned file is the library itself; the bare name may be a link.
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found
        .into_iter()
        .next()
        .ok_or_else(|| OnnxError::NoRuntime(format!("no libonnxruntime.so in {}; {HOW_TO_GET_IT}", capi.display())))
}

fn environment(python: &str) -> Result<ort::environment::Environment, OnnxError> {
    let mut env = ENVIRONMENT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = env.as_ref() {
        return Ok(e.clone());
    }
    let library = find_library(python)?;
    let built = ort::init_from(&library)
        .map_err(|e| OnnxError::NoRuntime(format!("cannot load {}: {e}", library.display())))?
        .with_name("sedge")
        .build()
        .map_err(|e| OnnxError::NoRuntime(format!("cannot start ONNX Runtime from {}: {e}", library.display())))?;
    *env = Some(built.clone());
    Ok(built)
}

fn dtype_of(t: TensorElementType) -> Option<DType> {
    Some(match t {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float64 => DType::F64,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Int8 => DType::I8,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

fn info(name: &str, ty: &ValueType) -> Result<TensorInfo, OnnxError> {
    match ty {
        ValueType::Tensor { ty, shape, .. } => {
            let dtype = dtype_of(*ty).ok_or_else(|| {
                OnnxError::Unsupported(format!("{name} is a tensor of {ty:?}, which sedge does not carry"))
            })?;
            Ok(TensorInfo { name: name.to_owned(), dtype, shape: shape.iter().copied().collect() })
        }
        other => Err(OnnxError::Unsupported(format!("{name} is a {other:?}, not a tensor"))),
    }
}

/// A model with its session(s).
pub struct Model {
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    sessions: Vec<SharedSession>,
    /// A run's settings that give the arena's free memory back at its end.
    release: RunOptions,
    /// Runs that may be under way at once.
    runners: usize,
    pub threads: usize,
}

impl Model {
    /// Loads `path` into one session that `runners` runs share, each of
    /// `threads` intra-op threads, with ONNX Runtime found through
    /// `python`. Blocking.
    pub fn load(path: &Path, python: &str, runners: usize, threads: usize) -> Result<Self, OnnxError> {
        Self::load_sessions(path, python, 1, runners, threads)
    }

    /// [`Self::load`] with a session of its own for each of `sessions`
    /// runners: the weights held once per session (what the bench compares
    /// the shared session with).
    pub fn load_separate(path: &Path, python: &str, sessions: usize, threads: usize) -> Result<Self, OnnxError> {
        Self::load_sessions(path, python, sessions, sessions, threads)
    }

    fn load_sessions(
        path: &Path,
        python: &str,
        sessions: usize,
        runners: usize,
        threads: usize,
    ) -> Result<Self, OnnxError> {
        let env = environment(python)?;
        // Named by file only: the folder is the node's, not the caller's business.
        let shown = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned());
        // Opened here first, for a message naming the file only; ONNX
        // Runtime then reads the file itself, with no copy of it held in
        // memory beside the session while it loads.
        std::fs::File::open(path).map_err(|e| OnnxError::Load(format!("cannot read {shown}: {e}")))?;
        let mut loaded = Vec::with_capacity(sessions.max(1));
        for _ in 0..sessions.max(1) {
            let session = Session::builder(&env)
                .and_then(|b| b.with_intra_threads(threads.max(1)).map_err(ort::Error::from))
                .and_then(|b| b.with_inter_threads(1).map_err(ort::Error::from))
                // Prepacked copies of the weights cost EfficientNet-Lite0's
                // session about 15 of its 67 MiB for no speed here
                // (bench/ort-session-memory.py).
                .and_then(|b| b.with_prepacking(false).map_err(ort::Error::from))
                .and_then(|mut b| b.commit_from_file(path))
                .map_err(|e| {
                    OnnxError::Load(format!("{} is not a model ONNX Runtime can load: {e}", path.display()))
                })?;
            loaded.push(SharedSession::new(session).map_err(OnnxError::Unsupported)?);
        }
        let first = loaded[0].session();
        let inputs = first.inputs().iter().map(|o| info(o.name(), o.dtype())).collect::<Result<Vec<_>, _>>()?;
        let outputs = first.outputs().iter().map(|o| info(o.name(), o.dtype())).collect::<Result<Vec<_>, _>>()?;
        let mut release = RunOptions::new().map_err(|e| OnnxError::Load(format!("ONNX Runtime's run options: {e}")))?;
        release
            .set("memory.enable_memory_arena_shrinkage", "cpu:0")
            .map_err(|e| OnnxError::Load(format!("ONNX Runtime's arena shrinkage: {e}")))?;
        Ok(Self { inputs, outputs, sessions: loaded, release, runners: runners.max(1), threads: threads.max(1) })
    }

    /// Runs that may be under way at once.
    pub fn instances(&self) -> usize {
        self.runners
    }

    /// Sessions holding the weights (one unless loaded separately).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Whether every input and output has a first dimension of any size.
    pub fn batches(&self) -> bool {
        self.inputs.iter().chain(&self.outputs).all(TensorInfo::batches)
    }

    /// Runs `inputs` (already checked) as runner `instance`. Blocking; at
    /// most [`Self::instances`] runs at once, each on its own thread.
    pub fn run(&self, instance: usize, inputs: &[Tensor]) -> Result<Vec<Tensor>, String> {
        self.run_owned(instance, inputs.to_vec())
    }

    /// [`Self::run`] on tensors it may keep: their data becomes ONNX
    /// Runtime's input without a copy.
    pub fn run_owned(&self, instance: usize, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        self.run_inner(instance, inputs, None)
    }

    /// Runs `inputs` and then gives the memory its session's arena holds
    /// and no run uses back to the system: what a model keeps while idle.
    /// A whole run, so only for when the model has nothing else to do.
    pub fn run_releasing(&self, instance: usize, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, String> {
        self.run_inner(instance, inputs, Some(&self.release))
    }

    fn run_inner(
        &self,
        instance: usize,
        inputs: Vec<Tensor>,
        options: Option<&RunOptions>,
    ) -> Result<Vec<Tensor>, String> {
        // FP32 inputs are lent to ONNX Runtime as views: of the request's
        // own bytes when they were read in place, else of a buffer kept for
        // this thread's next inputs. The others are handed over.
        let (mut lent, mut given) = (Vec::new(), Vec::new());
        for t in inputs {
            match t.data {
                Data::F32(v) => lent.push((t.name, t.shape, Lent::Kept(v))),
                Data::F32Le(b) => lent.push((t.name, t.shape, Lent::InPlace(b))),
                data => {
                    let name = t.name.clone();
                    let value = to_value(Tensor { name: t.name, shape: t.shape, data })
                        .map_err(|e| format!("input {name:?}: {e}"))?;
                    given.push((name, value));
                }
            }
        }
        let views = lent
            .iter()
            .map(|(name, shape, v)| {
                TensorRef::from_array_view((shape.clone(), v.values())).map_err(|e| format!("input {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut values: Vec<(&str, &dyn AsPointer<Sys = ort::sys::OrtValue>)> =
            Vec::with_capacity(lent.len() + given.len());
        for ((name, _, _), view) in lent.iter().zip(&views) {
            values.push((name.as_str(), &**view));
        }
        for (name, value) in &given {
            values.push((name.as_str(), value));
        }
        let session = self.sessions.get(instance % self.sessions.len()).ok_or("no session")?;
        let outputs = session.run_with(&values, options).map_err(|e| format!("the model failed: {e}"));
        drop(values);
        drop(views);
        for (_, _, v) in lent {
            if let Lent::Kept(v) = v {
                crate::tensor::recycle_f32(v);
            }
        }
        let outputs = outputs?;
        self.outputs.iter().zip(&outputs).map(|(o, value)| from_value(&o.name, o.dtype, value)).collect()
    }
}

/// An FP32 input's values while ONNX Runtime reads them.
enum Lent {
    Kept(Vec<f32>),
    InPlace(F32Bytes),
}

impl Lent {
    fn values(&self) -> &[f32] {
        match self {
            Self::Kept(v) => v,
            Self::InPlace(b) => b.values(),
        }
    }
}

fn to_value(t: Tensor) -> Result<DynValue, ort::Error> {
    let shape = t.shape;
    Ok(match t.data {
        Data::F32(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        Data::F32Le(b) => ort::value::Tensor::from_array((shape, b.values().to_vec()))?.into_dyn(),
        Data::F64(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        Data::I64(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        Data::I32(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        Data::U8(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        Data::I8(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
        Data::Bool(v) => ort::value::Tensor::from_array((shape, v))?.into_dyn(),
    })
}

fn from_value(name: &str, dtype: DType, value: &DynValue) -> Result<Tensor, String> {
    let bad = |e: ort::Error| format!("reading output {name:?}: {e}");
    macro_rules! take {
        ($t:ty, $variant:ident) => {{
            let (shape, data) = value.try_extract_tensor::<$t>().map_err(bad)?;
            let shape = shape.iter().map(|d| usize::try_from(*d).unwrap_or(0)).collect();
            Tensor::new(name, shape, Data::$variant(data.to_vec()))
        }};
    }
    match dtype {
        DType::F32 => take!(f32, F32),
        DType::F64 => take!(f64, F64),
        DType::I64 => take!(i64, I64),
        DType::I32 => take!(i32, I32),
        DType::U8 => take!(u8, U8),
        DType::I8 => take!(i8, I8),
        DType::Bool => take!(bool, Bool),
    }
}
