//! Tensors as requests carry them: JSON (the Open Inference Protocol's
//! `{"name", "shape", "datatype", "data"}`, or a name mapped to nested
//! arrays) and raw little-endian bytes; checked against what the model
//! declares, so a wrong shape is a 400 naming the input and the shape it
//! must have. Pure: no ONNX Runtime here.

use bytes::Bytes;
use serde::ser::{Serialize, Serializer};
use serde_json::{json, Value};

/// Element types, named as the inference protocol names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F64,
    I64,
    I32,
    U8,
    I8,
    Bool,
}

impl DType {
    pub const ALL: [DType; 7] = [Self::F32, Self::F64, Self::I64, Self::I32, Self::U8, Self::I8, Self::Bool];

    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "FP32",
            Self::F64 => "FP64",
            Self::I64 => "INT64",
            Self::I32 => "INT32",
            Self::U8 => "UINT8",
            Self::I8 => "INT8",
            Self::Bool => "BOOL",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name().eq_ignore_ascii_case(name))
    }

    /// Bytes per element in the binary form.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::U8 | Self::I8 | Self::Bool => 1,
        }
    }
}

// Large input buffers this thread's runs are done with, kept for its next
// inputs: with glibc's mmap threshold fixed, a 602 KB input made in fresh
// memory each time costs page faults and zeroing that showed as most of
// the kernel's share of a served model's CPU (docs/models.md).
thread_local! {
    static SPARE_F32: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Buffers kept per thread, and the smallest worth keeping (in values).
const SPARE_KEPT: usize = 1;
const SPARE_MIN: usize = 32 * 1024;

/// An empty buffer with room for `len` values, a kept one when this thread has one.
fn spare_f32(len: usize) -> Vec<f32> {
    if len < SPARE_MIN {
        return Vec::with_capacity(len);
    }
    SPARE_F32.with(|spare| {
        let mut spare = spare.borrow_mut();
        match spare.iter().position(|v| v.capacity() >= len) {
            Some(i) => {
                let mut v = spare.swap_remove(i);
                v.clear();
                v
            }
            None => Vec::with_capacity(len),
        }
    })
}

/// Keeps a buffer a run is done with for this thread's next inputs.
pub fn recycle_f32(v: Vec<f32>) {
    if v.capacity() < SPARE_MIN {
        return;
    }
    SPARE_F32.with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < SPARE_KEPT {
            spare.push(v);
        }
    });
}

#[derive(Debug, Clone)]
pub enum Data {
    F32(Vec<f32>),
    /// FP32 values read in place from a request's own bytes (an HTTP body,
    /// a worker's frame): lent to ONNX Runtime as they are, where a copy
    /// into a vector of their own would cost a pass over 602 KB for
    /// EfficientNet's input. Only [`Data::from_shared_le_bytes`] makes it.
    F32Le(F32Bytes),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    U8(Vec<u8>),
    I8(Vec<i8>),
    Bool(Vec<bool>),
}

/// Little-endian FP32 bytes, aligned for `f32`, on a little-endian machine:
/// readable as `&[f32]` without a copy.
#[derive(Debug, Clone)]
pub struct F32Bytes(Bytes);

impl F32Bytes {
    /// `bytes` when they can be read as FP32 values in place.
    fn new(bytes: Bytes) -> Option<Self> {
        (cfg!(target_endian = "little") && bytemuck::try_cast_slice::<u8, f32>(&bytes).is_ok()).then_some(Self(bytes))
    }

    /// The values. Checked when made; the bytes cannot move or change since.
    pub fn values(&self) -> &[f32] {
        bytemuck::try_cast_slice(&self.0).unwrap_or_default()
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        match (self.f32s(), other.f32s()) {
            (Some(a), Some(b)) => a == b,
            (None, None) => match (self, other) {
                (Self::F64(a), Self::F64(b)) => a == b,
                (Self::I64(a), Self::I64(b)) => a == b,
                (Self::I32(a), Self::I32(b)) => a == b,
                (Self::U8(a), Self::U8(b)) => a == b,
                (Self::I8(a), Self::I8(b)) => a == b,
                (Self::Bool(a), Self::Bool(b)) => a == b,
                _ => false,
            },
            _ => false,
        }
    }
}

macro_rules! each {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::F32Le(b) => {
                let $v = b.values();
                $body
            }
            Data::F64($v) => $body,
            Data::I64($v) => $body,
            Data::I32($v) => $body,
            Data::U8($v) => $body,
            Data::I8($v) => $body,
            Data::Bool($v) => $body,
        }
    };
}

impl Data {
    pub fn dtype(&self) -> DType {
        match self {
            Self::F32(_) | Self::F32Le(_) => DType::F32,
            Self::F64(_) => DType::F64,
            Self::I64(_) => DType::I64,
            Self::I32(_) => DType::I32,
            Self::U8(_) => DType::U8,
            Self::I8(_) => DType::I8,
            Self::Bool(_) => DType::Bool,
        }
    }

    pub fn len(&self) -> usize {
        each!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of FP32 data, however held.
    pub fn f32s(&self) -> Option<&[f32]> {
        match self {
            Self::F32(v) => Some(v),
            Self::F32Le(b) => Some(b.values()),
            _ => None,
        }
    }

    fn empty(dtype: DType) -> Self {
        match dtype {
            DType::F32 => Self::F32(Vec::new()),
            DType::F64 => Self::F64(Vec::new()),
            DType::I64 => Self::I64(Vec::new()),
            DType::I32 => Self::I32(Vec::new()),
            DType::U8 => Self::U8(Vec::new()),
            DType::I8 => Self::I8(Vec::new()),
            DType::Bool => Self::Bool(Vec::new()),
        }
    }

    /// Appends `other`'s elements (same type).
    fn extend(&mut self, other: &Data) -> bool {
        if let (Self::F32(a), Some(b)) = (&mut *self, other.f32s()) {
            a.extend_from_slice(b);
            return true;
        }
        match (self, other) {
            (Self::F64(a), Self::F64(b)) => a.extend_from_slice(b),
            (Self::I64(a), Self::I64(b)) => a.extend_from_slice(b),
            (Self::I32(a), Self::I32(b)) => a.extend_from_slice(b),
            (Self::U8(a), Self::U8(b)) => a.extend_from_slice(b),
            (Self::I8(a), Self::I8(b)) => a.extend_from_slice(b),
            (Self::Bool(a), Self::Bool(b)) => a.extend_from_slice(b),
            _ => return false,
        }
        true
    }

    fn slice(&self, start: usize, end: usize) -> Data {
        match self {
            Self::F32(v) => Self::F32(v[start..end].to_vec()),
            Self::F32Le(b) => Self::F32(b.values()[start..end].to_vec()),
            Self::F64(v) => Self::F64(v[start..end].to_vec()),
            Self::I64(v) => Self::I64(v[start..end].to_vec()),
            Self::I32(v) => Self::I32(v[start..end].to_vec()),
            Self::U8(v) => Self::U8(v[start..end].to_vec()),
            Self::I8(v) => Self::I8(v[start..end].to_vec()),
            Self::Bool(v) => Self::Bool(v[start..end].to_vec()),
        }
    }

    /// Elements from numbers (or booleans) in JSON, as `dtype`.
    fn from_numbers(dtype: DType, values: &[&Value]) -> Result<Data, String> {
        let bad = |v: &Value| format!("{v} is not a {} value", dtype.name());
        macro_rules! fill {
            ($variant:ident, $conv:expr) => {{
                let mut out = Vec::with_capacity(values.len());
                for v in values {
                    out.push($conv(v).ok_or_else(|| bad(v))?);
                }
                Data::$variant(out)
            }};
        }
        Ok(match dtype {
            DType::F32 => fill!(F32, |v: &Value| v.as_f64().map(|x| x as f32)),
            DType::F64 => fill!(F64, |v: &Value| v.as_f64()),
            DType::I64 => fill!(I64, |v: &Value| v.as_i64()),
            DType::I32 => fill!(I32, |v: &Value| v.as_i64().and_then(|x| i32::try_from(x).ok())),
            DType::U8 => fill!(U8, |v: &Value| v.as_u64().and_then(|x| u8::try_from(x).ok())),
            DType::I8 => fill!(I8, |v: &Value| v.as_i64().and_then(|x| i8::try_from(x).ok())),
            DType::Bool => fill!(Bool, |v: &Value| v.as_bool()),
        })
    }

    fn to_json(&self) -> Value {
        each!(self, v => json!(v))
    }

    /// Little-endian bytes, as the inference protocol's binary extension sends them.
    pub fn from_le_bytes(dtype: DType, bytes: &[u8]) -> Result<Data, String> {
        if !bytes.len().is_multiple_of(dtype.size()) {
            return Err(format!("{} bytes are not a whole number of {} values", bytes.len(), dtype.name()));
        }
        macro_rules! read {
            ($t:ty, $variant:ident) => {
                Data::$variant(
                    bytes
                        .chunks_exact(std::mem::size_of::<$t>())
                        .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or_default()))
                        .collect(),
                )
            };
        }
        Ok(match dtype {
            DType::F32 => {
                let mut v = spare_f32(bytes.len() / 4);
                v.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default())));
                Data::F32(v)
            }
            DType::F64 => read!(f64, F64),
            DType::I64 => read!(i64, I64),
            DType::I32 => read!(i32, I32),
            DType::U8 => Data::U8(bytes.to_vec()),
            DType::I8 => Data::I8(bytes.iter().map(|b| *b as i8).collect()),
            DType::Bool => Data::Bool(bytes.iter().map(|b| *b != 0).collect()),
        })
    }

    /// [`Self::from_le_bytes`] of bytes it may keep: FP32 values that can be
    /// read in place (aligned, on a little-endian machine) are not copied.
    pub fn from_shared_le_bytes(dtype: DType, bytes: Bytes) -> Result<Data, String> {
        if dtype == DType::F32 && bytes.len().is_multiple_of(4) {
            if let Some(kept) = F32Bytes::new(bytes.clone()) {
                return Ok(Data::F32Le(kept));
            }
        }
        Self::from_le_bytes(dtype, &bytes)
    }

    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            // One copy of memory where the machine's order is the wire's.
            Self::F32(v) if cfg!(target_endian = "little") => bytemuck::cast_slice(v).to_vec(),
            Self::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::F32Le(b) => b.0.to_vec(),
            Self::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Self::U8(v) => v.clone(),
            Self::I8(v) => v.iter().map(|x| *x as u8).collect(),
            Self::Bool(v) => v.iter().map(|x| u8::from(*x)).collect(),
        }
    }
}

/// Values as JSON numbers (or booleans), written out as they are read:
/// FP32 ones widened to f64 as a `Value` holds them, so the text is the
/// one [`Tensor::to_json`] gives.
impl Serialize for Data {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.f32s() {
            Some(v) => s.collect_seq(v.iter().map(|x| f64::from(*x))),
            None => each!(self, v => s.collect_seq(v.iter())),
        }
    }
}

/// A tensor in the JSON form of [`Tensor::to_json`], serialized without
/// a tree of `Value`s in between (one per element of a 1000-class output).
/// Fields in the order a `Value`'s sorted map gives them.
#[derive(serde::Serialize)]
pub struct TensorJson<'a> {
    data: &'a Data,
    datatype: &'static str,
    name: &'a str,
    shape: &'a [usize],
}

/// One named tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Data,
}

/// What a model declares for one of its inputs or outputs; `-1` is a
/// dimension of any size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<i64>,
}

impl TensorInfo {
    /// The shape as people read it: `[-1, 64]` becomes `[N, 64]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> =
            self.shape.iter().map(|d| if *d < 0 { "N".to_owned() } else { d.to_string() }).collect();
        format!("[{}]", dims.join(", "))
    }

    /// Whether the first dimension is of any size: requests can be stacked.
    pub fn batches(&self) -> bool {
        self.shape.first().is_some_and(|d| *d < 0)
    }

    fn fits(&self, shape: &[usize]) -> bool {
        shape.len() == self.shape.len()
            && self.shape.iter().zip(shape).all(|(want, got)| *want < 0 || usize::try_from(*want).ok() == Some(*got))
    }
}

impl Tensor {
    pub fn new(name: impl Into<String>, shape: Vec<usize>, data: Data) -> Result<Self, String> {
        let name = name.into();
        let count: usize = shape.iter().product();
        if count != data.len() {
            return Err(format!("input {name:?}: shape {shape:?} holds {count} values, but {} were given", data.len()));
        }
        Ok(Self { name, shape, data })
    }

    /// The tensor as JSON, for serializing straight into an answer.
    pub fn as_json(&self) -> TensorJson<'_> {
        TensorJson { data: &self.data, datatype: self.data.dtype().name(), name: &self.name, shape: &self.shape }
    }

    pub fn to_json(&self) -> Value {
        json!({ "name": self.name, "datatype": self.data.dtype().name(), "shape": self.shape, "data": self.data.to_json() })
    }

    /// Stacks tensors of the same name along the first axis.
    pub fn stack(parts: &[&Tensor]) -> Option<Tensor> {
        let first = parts.first()?;
        let mut data = Data::empty(first.data.dtype());
        let mut rows = 0;
        for p in parts {
            if p.shape.get(1..) != first.shape.get(1..) || !data.extend(&p.data) {
                return None;
            }
            rows += p.shape.first().copied().unwrap_or(1);
        }
        let mut shape = first.shape.clone();
        if let Some(d) = shape.first_mut() {
            *d = rows;
        }
        Some(Tensor { name: first.name.clone(), shape, data })
    }

    /// Splits along the first axis into pieces of `rows` rows each.
    pub fn split(&self, rows: &[usize]) -> Option<Vec<Tensor>> {
        let total: usize = rows.iter().sum();
        if self.shape.first() != Some(&total) {
            return None;
        }
        let per_row: usize = self.shape[1..].iter().product();
        let mut start = 0;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let end = start + r * per_row;
            let mut shape = self.shape.clone();
            shape[0] = *r;
            out.push(Tensor { name: self.name.clone(), shape, data: self.data.slice(start, end) });
            start = end;
        }
        Some(out)
    }
}

/// Checks `given` against the model's inputs: every one present, none
/// unknown, each of the declared type and shape. The message names the
/// input and the shape it must have.
pub fn check_inputs(given: &[Tensor], declared: &[TensorInfo]) -> Result<(), String> {
    for t in given {
        let Some(info) = declared.iter().find(|i| i.name == t.name) else {
            let names: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
            return Err(format!("the model has no input {:?}; its inputs are {names:?}", t.name));
        };
        if t.data.dtype() != info.dtype {
            return Err(format!(
                "input {:?} must be {}, found {}",
                info.name,
                info.dtype.name(),
                t.data.dtype().name()
            ));
        }
        if !info.fits(&t.shape) {
            return Err(format!(
                "input {:?} must have shape {} ({}), found {:?}",
                info.name,
                info.shape_text(),
                info.dtype.name(),
                t.shape
            ));
        }
    }
    for info in declared {
        if !given.iter().any(|t| t.name == info.name) {
            return Err(format!(
                "input {:?} is missing: shape {} ({})",
                info.name,
                info.shape_text(),
                info.dtype.name()
            ));
        }
    }
    Ok(())
}

/// The tensors of a JSON request body: `{"inputs": [{"name", "shape",
/// "datatype"?, "data"}...]}` or `{"inputs": {"NAME": nested arrays}}`.
/// Element types come from the model's declaration.
pub fn from_json(body: &Value, declared: &[TensorInfo]) -> Result<Vec<Tensor>, String> {
    let inputs = body.get("inputs").ok_or("expected a JSON object with \"inputs\"")?;
    let dtype_of = |name: &str| -> Result<DType, String> {
        declared.iter().find(|i| i.name == name).map(|i| i.dtype).ok_or_else(|| {
            let names: Vec<&str> = declared.iter().map(|i| i.name.as_str()).collect();
            format!("the model has no input {name:?}; its inputs are {names:?}")
        })
    };
    match inputs {
        Value::Array(list) => list
            .iter()
            .map(|item| {
                let name = item.get("name").and_then(Value::as_str).ok_or("each input needs a \"name\"")?;
                let dtype = dtype_of(name)?;
                if let Some(given) = item.get("datatype").and_then(Value::as_str) {
                    if DType::parse(given) != Some(dtype) {
                        return Err(format!("input {name:?} must be {}, found {given}", dtype.name()));
                    }
                }
                let (nested_shape, values) =
                    flatten(item.get("data").ok_or_else(|| format!("input {name:?} has no \"data\""))?)
                        .map_err(|e| format!("input {name:?}: {e}"))?;
                let shape = match item.get("shape") {
                    Some(s) => shape_of(s).map_err(|e| format!("input {name:?}: {e}"))?,
                    None => nested_shape,
                };
                let data = Data::from_numbers(dtype, &values).map_err(|e| format!("input {name:?}: {e}"))?;
                Tensor::new(name, shape, data)
            })
            .collect(),
        Value::Object(map) => map
            .iter()
            .map(|(name, nested)| {
                let dtype = dtype_of(name)?;
                let (shape, values) = flatten(nested).map_err(|e| format!("input {name:?}: {e}"))?;
                let data = Data::from_numbers(dtype, &values).map_err(|e| format!("input {name:?}: {e}"))?;
                Tensor::new(name.clone(), shape, data)
            })
            .collect(),
        _ => Err("\"inputs\" must be a list of tensors or an object of name: nested arrays".to_owned()),
    }
}

/// A shape given as a list of non-negative whole numbers.
pub fn shape_of(v: &Value) -> Result<Vec<usize>, String> {
    let dims = v.as_array().ok_or("\"shape\" must be a list of whole numbers")?;
    dims.iter()
        .map(|d| d.as_u64().and_then(|n| usize::try_from(n).ok()).ok_or_else(|| format!("bad dimension {d} in shape")))
        .collect()
}

/// Nested arrays to their shape and elements in row-major order; a flat
/// list is shape `[len]`. Ragged nesting is refused.
fn flatten(v: &Value) -> Result<(Vec<usize>, Vec<&Value>), String> {
    let mut shape = Vec::new();
    let mut probe = v;
    while let Value::Array(items) = probe {
        shape.push(items.len());
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    let mut out = Vec::with_capacity(shape.iter().product());
    collect(v, &shape, &mut out)?;
    Ok((shape, out))
}

fn collect<'a>(v: &'a Value, shape: &[usize], out: &mut Vec<&'a Value>) -> Result<(), String> {
    match (v, shape.split_first()) {
        (Value::Array(items), Some((len, rest))) if items.len() == *len => {
            items.iter().try_for_each(|item| collect(item, rest, out))
        }
        (Value::Array(_), _) => Err("nested lists are not all of the same length".to_owned()),
        (scalar, None) => {
            out.push(scalar);
            Ok(())
        }
        (_, Some(_)) => Err("nested lists are not all of the same depth".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_input_is_made_in_the_buffer_of_the_last_one_with_its_own_values() {
        let bytes = |x: f32| -> Vec<u8> { (0..SPARE_MIN * 2).flat_map(|_| x.to_le_bytes()).collect() };
        let Data::F32(first) = Data::from_le_bytes(DType::F32, &bytes(1.5)).expect("f32") else { panic!("f32") };
        let at = first.as_ptr();
        recycle_f32(first);
        let Data::F32(second) = Data::from_le_bytes(DType::F32, &bytes(-2.0)).expect("f32") else { panic!("f32") };
        assert_eq!(second.as_ptr(), at, "the kept buffer is used again");
        assert!(second.len() == SPARE_MIN * 2 && second.iter().all(|x| *x == -2.0), "with the new values only");
        // Small inputs are not kept: a fresh buffer of their own size.
        recycle_f32(vec![0.0; 4]);
        let Data::F32(small) = Data::from_le_bytes(DType::F32, &[0u8; 16]).expect("f32") else { panic!("f32") };
        assert_eq!(small.len(), 4);
    }

    fn digits() -> Vec<TensorInfo> {
        vec![TensorInfo { name: "X".into(), dtype: DType::F32, shape: vec![-1, 4] }]
    }

    #[test]
    fn both_json_forms_give_the_same_tensor() {
        let v2 =
            json!({"inputs": [{"name": "X", "shape": [2, 4], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]});
        let nested = json!({"inputs": {"X": [[1, 2, 3, 4], [5, 6, 7, 8]]}});
        let a = from_json(&v2, &digits()).expect("v2");
        let b = from_json(&nested, &digits()).expect("nested");
        assert_eq!(a, b);
        assert_eq!(a[0].shape, [2, 4]);
        check_inputs(&a, &digits()).expect("fits");
    }

    #[test]
    fn wrong_shapes_and_types_name_the_input_and_the_shape_it_needs() {
        let t = from_json(&json!({"inputs": {"X": [[1, 2, 3]]}}), &digits()).expect("parses");
        let e = check_inputs(&t, &digits()).expect_err("3 is not 4");
        assert_eq!(e, "input \"X\" must have shape [N, 4] (FP32), found [1, 3]");
        let e = from_json(&json!({"inputs": [{"name": "X", "datatype": "INT64", "data": [1]}]}), &digits())
            .expect_err("type");
        assert!(e.contains("must be FP32"), "{e}");
        let e = from_json(&json!({"inputs": {"Y": [1]}}), &digits()).expect_err("name");
        assert!(e.contains("no input \"Y\"") && e.contains("[\"X\"]"), "{e}");
        assert!(check_inputs(&[], &digits()).expect_err("missing").contains("missing: shape [N, 4]"));
        let e = from_json(&json!({"inputs": {"X": [[1, 2], [3]]}}), &digits()).expect_err("ragged");
        assert!(e.contains("same length"), "{e}");
        let e = from_json(&json!({"inputs": [{"name": "X", "shape": [1, 4], "data": [1, 2]}]}), &digits())
            .expect_err("count");
        assert!(e.contains("holds 4 values"), "{e}");
    }

    #[test]
    fn stacking_and_splitting_on_the_first_axis_round_trip() {
        let a = Tensor::new("X", vec![1, 2], Data::F32(vec![1.0, 2.0])).expect("a");
        let b = Tensor::new("X", vec![2, 2], Data::F32(vec![3.0, 4.0, 5.0, 6.0])).expect("b");
        let both = Tensor::stack(&[&a, &b]).expect("stack");
        assert_eq!(both.shape, [3, 2]);
        assert_eq!(both.split(&[1, 2]).expect("split"), [a, b]);
        let other = Tensor::new("X", vec![1, 3], Data::F32(vec![0.0; 3])).expect("c");
        assert!(Tensor::stack(&[&both, &other]).is_none(), "rows of another width");
    }

    /// Bytes at an address fit for `f32`, as a body read into a buffer of its own is.
    struct Aligned(Vec<f32>);

    impl AsRef<[u8]> for Aligned {
        fn as_ref(&self) -> &[u8] {
            bytemuck::cast_slice(&self.0)
        }
    }

    #[test]
    fn fp32_bytes_are_read_in_place_when_aligned_and_copied_when_not() {
        let values: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
        let bytes = Bytes::from_owner(Aligned(values.clone()));
        let data = Data::from_shared_le_bytes(DType::F32, bytes.clone()).expect("f32");
        let Data::F32Le(lent) = &data else { panic!("aligned bytes are copied: {data:?}") };
        assert_eq!(lent.values().as_ptr().cast::<u8>(), bytes.as_ptr(), "the same memory");
        assert_eq!(data, Data::F32(values.clone()));
        assert_eq!(data.to_le_bytes(), bytes.to_vec());
        // One byte in, the values are no longer at an f32's address: copied.
        let mut shifted = vec![0u8];
        shifted.extend_from_slice(&bytes);
        let off = Bytes::from(shifted).slice(1..);
        let copied = Data::from_shared_le_bytes(DType::F32, off).expect("f32");
        assert!(matches!(copied, Data::F32(_)));
        assert_eq!(copied, Data::F32(values));
        // Other types are always read into values of their own.
        let ints = Data::from_shared_le_bytes(DType::I32, bytes.slice(..8)).expect("i32");
        assert_eq!(ints.dtype(), DType::I32);
        assert!(Data::from_shared_le_bytes(DType::F32, bytes.slice(..6)).is_err(), "not whole values");
    }

    #[test]
    fn data_read_in_place_stacks_and_splits_like_its_copy() {
        let bytes = Bytes::from_owner(Aligned(vec![1.0, 2.0, 3.0, 4.0]));
        let lent =
            Tensor::new("X", vec![2, 2], Data::from_shared_le_bytes(DType::F32, bytes).expect("f32")).expect("t");
        let owned = Tensor::new("X", vec![1, 2], Data::F32(vec![5.0, 6.0])).expect("t");
        let both = Tensor::stack(&[&lent, &owned]).expect("stack");
        assert_eq!(both.data, Data::F32(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(both.split(&[2, 1]).expect("split")[0].data, lent.data);
        assert_eq!(lent.to_json()["data"], json!([1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn tensors_serialized_straight_read_as_their_json_values() {
        let tensors = [
            Tensor::new("logits", vec![1, 3], Data::F32(vec![0.1, -2.5e-8, f32::MAX])).expect("t"),
            Tensor::new("label", vec![2], Data::I64(vec![3, -8])).expect("t"),
            Tensor::new("mask", vec![2], Data::Bool(vec![true, false])).expect("t"),
            Tensor::new("nan", vec![1], Data::F32(vec![f32::NAN])).expect("t"),
        ];
        for t in &tensors {
            let text = serde_json::to_string(&t.as_json()).expect("serializes");
            assert_eq!(text, t.to_json().to_string(), "the same text as through a Value");
        }
    }

    #[test]
    fn binary_data_is_little_endian() {
        let d = Data::F32(vec![1.5, -2.0]);
        let bytes = d.to_le_bytes();
        assert_eq!(bytes.len(), 8);
        assert_eq!(Data::from_le_bytes(DType::F32, &bytes).expect("decode"), d);
        assert!(Data::from_le_bytes(DType::I64, &bytes[..7]).is_err());
    }
}
