//! A picture in a request (JPEG or PNG) to a model's input tensor, and a
//! classifier's scores to its top classes.

use image::imageops::FilterType;
use sedge_core::model::{ImagePrep, Layout};
use serde_json::{json, Value};

use crate::tensor::{Data, Tensor};

/// Largest picture decoded, per side: a hostile PNG header cannot make the
/// node allocate gigabytes.
const MAX_SIDE: u32 = 8192;

/// Decodes `bytes`, resizes the shorter side to `resize`, crops the centre
/// `crop` × `crop`, normalises each channel and lays it out as the model wants.
pub fn image_tensor(
    bytes: &[u8],
    prep: &ImagePrep,
    name: &str,
    sizes: (u32, u32),
    layout: Layout,
) -> Result<Tensor, String> {
    let (resize, crop) = sizes;
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| format!("cannot read the image: {e}"))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    reader.limits(limits);
    let picture = reader.decode().map_err(|e| format!("cannot decode the image (JPEG or PNG expected): {e}"))?;
    let rgb = picture.to_rgb8();
    let (w, h) = rgb.dimensions();
    if w == 0 || h == 0 {
        return Err("the image is empty".to_owned());
    }
    // The shorter side becomes `resize`, the other keeps the aspect ratio.
    let (nw, nh) = if w <= h {
        (resize, ((u64::from(h) * u64::from(resize)).div_ceil(u64::from(w))) as u32)
    } else {
        (((u64::from(w) * u64::from(resize)).div_ceil(u64::from(h))) as u32, resize)
    };
    let resized = image::imageops::resize(&rgb, nw, nh, FilterType::Triangle);
    let (x0, y0) = ((nw - crop) / 2, (nh - crop) / 2);
    let cropped = image::imageops::crop_imm(&resized, x0, y0, crop, crop).to_image();
    let side = crop as usize;
    let mut out = vec![0f32; 3 * side * side];
    for (x, y, px) in cropped.enumerate_pixels() {
        for c in 0..3 {
            let source = if prep.bgr { 2 - c } else { c };
            let v = (f32::from(px.0[source]) - prep.mean[c]) / prep.std[c];
            let (x, y) = (x as usize, y as usize);
            let at = match layout {
                Layout::Nchw => c * side * side + y * side + x,
                Layout::Nhwc => (y * side + x) * 3 + c,
            };
            out[at] = v;
        }
    }
    let shape = match layout {
        Layout::Nchw => vec![1, 3, side, side],
        Layout::Nhwc => vec![1, side, side, 3],
    };
    Tensor::new(name, shape, Data::F32(out))
}

/// The `top_k` best classes of one row of scores, best first, with labels
/// when known; `softmax` turns logits into probabilities first.
pub fn top_classes(scores: &[f32], labels: Option<&[String]>, top_k: usize, softmax: bool) -> Value {
    let probabilities: Vec<f32> = if softmax {
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let exp: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
        let sum: f32 = exp.iter().sum();
        exp.iter().map(|e| e / sum).collect()
    } else {
        scores.to_vec()
    };
    let mut order: Vec<usize> = (0..probabilities.len()).collect();
    order.sort_by(|a, b| probabilities[*b].total_cmp(&probabilities[*a]));
    let best: Vec<Value> = order
        .into_iter()
        .take(top_k)
        .map(|i| {
            let label = labels.and_then(|l| l.get(i)).map(String::as_str);
            json!({ "index": i, "label": label, "score": probabilities[i] })
        })
        .collect();
    Value::Array(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep() -> ImagePrep {
        ImagePrep { resize: None, crop: None, mean: [127.0; 3], std: [128.0; 3], layout: None, bgr: false }
    }

    fn png(w: u32, h: u32, px: [u8; 3]) -> Vec<u8> {
        let img = image::RgbImage::from_pixel(w, h, image::Rgb(px));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).expect("encode");
        out.into_inner()
    }

    #[test]
    fn a_picture_becomes_a_normalised_nchw_tensor_of_the_crop() {
        let t = image_tensor(&png(40, 30, [255, 127, 0]), &prep(), "input", (16, 8), Layout::Nchw).expect("tensor");
        assert_eq!(t.shape, [1, 3, 8, 8]);
        let Data::F32(v) = &t.data else { panic!("f32") };
        let plane = 64;
        assert!((v[0] - 1.0).abs() < 1e-6, "red (255 − 127) / 128 = 1.0, got {}", v[0]);
        assert!(v[plane].abs() < 1e-6, "green 127 is 0");
        assert!((v[2 * plane] + 127.0 / 128.0).abs() < 1e-6, "blue 0 is −0.99");
    }

    #[test]
    fn nhwc_and_bgr_reorder_the_channels() {
        let p = ImagePrep { bgr: true, ..prep() };
        let t = image_tensor(&png(8, 8, [255, 127, 0]), &p, "x", (8, 8), Layout::Nhwc).expect("tensor");
        assert_eq!(t.shape, [1, 8, 8, 3]);
        let Data::F32(v) = &t.data else { panic!("f32") };
        assert!((v[0] + 127.0 / 128.0).abs() < 1e-6 && (v[2] - 1.0).abs() < 1e-6, "blue first: {:?}", &v[..3]);
    }

    #[test]
    fn what_is_not_a_picture_is_named() {
        let e = image_tensor(b"not an image", &prep(), "x", (8, 8), Layout::Nchw).expect_err("garbage");
        assert!(e.contains("JPEG or PNG") || e.contains("cannot read"), "{e}");
    }

    #[test]
    fn top_classes_are_best_first_with_labels_and_softmax() {
        let labels: Vec<String> = ["cat", "dog", "fish"].map(String::from).to_vec();
        let best = top_classes(&[1.0, 3.0, 2.0], Some(&labels), 2, true);
        assert_eq!(best[0]["index"], 1);
        assert_eq!(best[0]["label"], "dog");
        assert_eq!(best[1]["label"], "fish");
        let p = best[0]["score"].as_f64().expect("score");
        assert!((p - 0.665).abs() < 0.01, "{p}");
        assert_eq!(top_classes(&[0.2, 0.8], None, 5, false).as_array().map(Vec::len), Some(2));
    }
}
