//! A model function's manifest tables — `[model]`, `[model.image]`,
//! `[model.output]` and `[batching]` — checked into a [`ModelSpec`]. What
//! depends on the model file itself (the crop size from its input shape, a
//! dynamic batch dimension for `[batching]`) is settled when it is loaded.

use std::time::Duration;

use serde::Deserialize;

/// Most requests stacked into one run.
const MAX_BATCH: u32 = 1024;
/// Longest a request may wait for others to join its batch.
const MAX_DELAY: Duration = Duration::from_secs(1);

// Eq: every float in a spec was checked finite, so equality is reflexive.
impl Eq for ModelSpec {}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    pub input: ModelInput,
    /// A JSON array of class names in the bundle, index = class.
    pub labels: Option<String>,
    pub output: OutputSpec,
    pub batching: Option<Batching>,
    /// Sessions of the model run side by side, and the threads each uses;
    /// unset, the node chooses within its cores.
    pub instances: Option<u32>,
    pub threads: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ModelInput {
    /// Requests carry tensors as JSON (or the inference protocol's binary form).
    Tensor,
    /// Requests carry a JPEG or PNG, turned into the model's input tensor.
    Image(ImagePrep),
}

/// How a picture becomes the input tensor: decoded, the shorter side
/// resized to `resize`, centre-cropped to `crop` × `crop`, each channel's
/// 0–255 value turned into `(x − mean) / std`, laid out as `layout`.
#[derive(Debug, Clone, PartialEq)]
pub struct ImagePrep {
    /// Unset: `crop` × 8 / 7 (256 for 224), the common ImageNet recipe.
    pub resize: Option<u32>,
    /// Unset: the model's input height.
    pub crop: Option<u32>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// Unset: from the model's input shape (channels of 3 at axis 1 or 3).
    pub layout: Option<Layout>,
    pub bgr: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

#[derive(Debug, Clone, PartialEq)]
pub struct OutputSpec {
    pub softmax: bool,
    /// Classes in an image answer, best first.
    pub top_k: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_batch: u32,
    pub max_delay: Duration,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawModel {
    input: Option<String>,
    labels: Option<String>,
    instances: Option<i64>,
    threads: Option<i64>,
    image: Option<RawImage>,
    #[serde(default)]
    output: RawOutput,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    resize: Option<i64>,
    crop: Option<i64>,
    mean: Option<Vec<f64>>,
    std: Option<Vec<f64>>,
    layout: Option<String>,
    channels: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutput {
    softmax: Option<bool>,
    top_k: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBatching {
    max_batch: Option<i64>,
    max_delay: Option<String>,
}

/// A problem with one field: its dotted name and what is wrong.
pub(crate) type FieldError = (String, String);

fn fail<T>(field: &str, problem: impl Into<String>) -> Result<T, FieldError> {
    Err((field.to_owned(), problem.into()))
}

fn whole(field: &str, value: Option<i64>, range: (u32, u32)) -> Result<Option<u32>, FieldError> {
    let Some(n) = value else { return Ok(None) };
    match u32::try_from(n) {
        Ok(v) if (range.0..=range.1).contains(&v) => Ok(Some(v)),
        _ => fail(field, format!("expected a whole number from {} to {}, found {n}", range.0, range.1)),
    }
}

fn triple(field: &str, value: Option<&[f64]>, default: f32) -> Result<[f32; 3], FieldError> {
    let Some(v) = value else { return Ok([default; 3]) };
    match v {
        [a, b, c] if v.iter().all(|x| x.is_finite()) => Ok([*a as f32, *b as f32, *c as f32]),
        _ => fail(field, format!("expected three numbers, one per channel (R, G, B), found {v:?}")),
    }
}

impl ModelSpec {
    pub(crate) fn from_raw(raw: RawModel, batching: Option<RawBatching>) -> Result<Self, FieldError> {
        let kind = raw.input.as_deref().unwrap_or(if raw.image.is_some() { "image" } else { "tensor" });
        let input = match kind {
            "tensor" if raw.image.is_some() => {
                return fail("model.input", "is \"tensor\", but [model.image] describes an image input")
            }
            "tensor" => ModelInput::Tensor,
            "image" => ModelInput::Image(image(raw.image.unwrap_or_default())?),
            other => return fail("model.input", format!("expected \"image\" or \"tensor\", found {other:?}")),
        };
        if let Some(labels) = &raw.labels {
            if labels.is_empty() || labels.starts_with('/') || labels.split('/').any(|c| c == "..") {
                return fail("model.labels", format!("expected a file in the function's folder, found {labels:?}"));
            }
        }
        let output = OutputSpec {
            softmax: raw.output.softmax.unwrap_or(false),
            top_k: whole("model.output.top_k", raw.output.top_k, (1, 1000))?.unwrap_or(5),
        };
        let batching = match batching {
            None => None,
            Some(b) => {
                let max_delay = match b.max_delay.as_deref() {
                    None => Duration::from_millis(2),
                    Some(text) => match humantime::parse_duration(text) {
                        Ok(d) if d <= MAX_DELAY => d,
                        Ok(_) => return fail("batching.max_delay", "must be at most 1s"),
                        Err(_) => {
                            return fail(
                                "batching.max_delay",
                                format!("expected a duration like \"2ms\" or \"500us\", found {text:?}"),
                            )
                        }
                    },
                };
                let max_batch = whole("batching.max_batch", b.max_batch, (1, MAX_BATCH))?.unwrap_or(8);
                Some(Batching { max_batch, max_delay })
            }
        };
        Ok(Self {
            input,
            labels: raw.labels,
            output,
            batching,
            instances: whole("model.instances", raw.instances, (1, 256))?,
            threads: whole("model.threads", raw.threads, (1, 256))?,
        })
    }
}

fn image(raw: RawImage) -> Result<ImagePrep, FieldError> {
    let layout = match raw.layout.as_deref() {
        None => None,
        Some("NCHW" | "nchw") => Some(Layout::Nchw),
        Some("NHWC" | "nhwc") => Some(Layout::Nhwc),
        Some(other) => return fail("model.image.layout", format!("expected \"NCHW\" or \"NHWC\", found {other:?}")),
    };
    let bgr = match raw.channels.as_deref() {
        None | Some("RGB" | "rgb") => false,
        Some("BGR" | "bgr") => true,
        Some(other) => return fail("model.image.channels", format!("expected \"RGB\" or \"BGR\", found {other:?}")),
    };
    let std = triple("model.image.std", raw.std.as_deref(), 1.0)?;
    if std.contains(&0.0) {
        return fail("model.image.std", "a channel's std must not be zero");
    }
    let prep = ImagePrep {
        resize: whole("model.image.resize", raw.resize, (1, 8192))?,
        crop: whole("model.image.crop", raw.crop, (1, 8192))?,
        mean: triple("model.image.mean", raw.mean.as_deref(), 0.0)?,
        std,
        layout,
        bgr,
    };
    if let (Some(r), Some(c)) = (prep.resize, prep.crop) {
        if c > r {
            return fail("model.image.crop", format!("{c} is larger than the resized shorter side, {r}"));
        }
    }
    Ok(prep)
}

impl ImagePrep {
    /// The sizes to use for a model whose input is `height` pixels high.
    pub fn sizes(&self, height: Option<u32>) -> (u32, u32) {
        let crop = self.crop.or(height).unwrap_or(224);
        let resize = self.resize.unwrap_or_else(|| crop.saturating_mul(8).div_ceil(7)).max(crop);
        (resize, crop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Tables {
        model: Option<RawModel>,
        batching: Option<RawBatching>,
    }

    fn spec(text: &str) -> Result<ModelSpec, FieldError> {
        let t: Tables = toml::from_str(text).expect("toml");
        ModelSpec::from_raw(t.model.unwrap_or_default(), t.batching)
    }

    #[test]
    fn an_image_classifier_reads_every_table() {
        let s = spec(
            "[model]\nlabels = \"labels.json\"\n[model.image]\nresize = 256\ncrop = 224\nmean = [127, 127, 127]\n\
             std = [128, 128, 128]\nlayout = \"NCHW\"\n[model.output]\nsoftmax = true\ntop_k = 3\n\
             [batching]\nmax_batch = 8\nmax_delay = \"2ms\"\n",
        )
        .expect("valid");
        let ModelInput::Image(prep) = &s.input else { panic!("image expected") };
        assert_eq!(
            (prep.resize, prep.crop, prep.mean, prep.layout),
            (Some(256), Some(224), [127.0; 3], Some(Layout::Nchw))
        );
        assert_eq!(s.output, OutputSpec { softmax: true, top_k: 3 });
        assert_eq!(s.batching, Some(Batching { max_batch: 8, max_delay: Duration::from_millis(2) }));
        assert_eq!(s.labels.as_deref(), Some("labels.json"));
    }

    #[test]
    fn defaults_are_a_tensor_model_without_batching() {
        let s = spec("").expect("valid");
        assert_eq!((s.input, s.batching, s.output.top_k), (ModelInput::Tensor, None, 5));
    }

    #[test]
    fn sizes_follow_the_model_unless_given() {
        let prep = ImagePrep { resize: None, crop: None, mean: [0.0; 3], std: [1.0; 3], layout: None, bgr: false };
        assert_eq!(prep.sizes(Some(224)), (256, 224));
        assert_eq!(prep.sizes(Some(300)), (343, 300));
        assert_eq!(ImagePrep { crop: Some(100), ..prep }.sizes(Some(224)), (115, 100));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            ("[model]\ninput = \"audio\"\n", "model.input"),
            ("[model]\ninput = \"tensor\"\n[model.image]\ncrop = 4\n", "model.input"),
            ("[model.image]\nmean = [1, 2]\n", "model.image.mean"),
            ("[model.image]\nstd = [1, 0, 1]\n", "model.image.std"),
            ("[model.image]\nlayout = \"CHW\"\n", "model.image.layout"),
            ("[model.image]\nresize = 100\ncrop = 224\n", "model.image.crop"),
            ("[model]\nlabels = \"../x.json\"\n", "model.labels"),
            ("[batching]\nmax_delay = \"5s\"\n", "batching.max_delay"),
            ("[batching]\nmax_batch = 0\n", "batching.max_batch"),
            ("[model.output]\ntop_k = 0\n", "model.output.top_k"),
        ];
        for (text, field) in cases {
            match spec(text) {
                Err((f, _)) => assert_eq!(f, field, "{text}"),
                Ok(s) => panic!("{text} should fail, got {s:?}"),
            }
        }
    }
}
