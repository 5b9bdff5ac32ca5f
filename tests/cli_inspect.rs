//! `outlier-attn inspect` on the all-MiniLM-L6-v2 fixture, and its refusals.

mod cli_common;
use cli_common::{temp, text, tool};

use std::path::PathBuf;

use outlier_attn::HostTensor;
use outlier_attn::safetensors_io::MINILM_FIXTURE;
use safetensors::Dtype;
use safetensors::tensor::TensorView;

#[test]
fn inspect_finds_the_cls_sink_and_draws_the_heatmap() {
    let svg = temp("heatmap.svg");
    let out = tool(&[
        "inspect",
        MINILM_FIXTURE,
        "--heatmap",
        svg.to_str().unwrap(),
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(stdout.contains("6 layers, B=2 Hq=12"), "{stdout}");
    assert!(stdout.contains("first_key_mass"), "{stdout}");
    // The paper's rule flags [CLS] in every layer.
    for layer in 0..6 {
        assert!(
            stdout.contains(&format!(
                "layer {layer}\n  outlier keys:     b0 key 0 [CLS]"
            )),
            "{stdout}"
        );
    }
    let picture = std::fs::read_to_string(&svg).unwrap();
    std::fs::remove_file(&svg).ok();
    assert!(picture.starts_with("<svg"));
    assert_eq!(picture.matches("<title>").count(), 6 * 12);
}

#[test]
fn inspect_shows_any_statistic_and_writes_json() {
    let json = temp("inspect.json");
    let out = tool(&[
        "inspect",
        MINILM_FIXTURE,
        "--stat",
        "q-ratio",
        "--backend",
        "reference",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("q_absmax / q_absmean"));
    let value: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    std::fs::remove_file(&json).ok();
    let layers = value["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 6);
    for layer in layers {
        assert_eq!(layer["heads"].as_array().unwrap().len(), 2 * 12);
        assert_eq!(layer["key_mass"].as_array().unwrap().len(), 2 * 12 * 12);
        let keys = layer["outlier_keys"].as_array().unwrap();
        assert!(keys.iter().any(|k| k["token"] == "[CLS]"), "{keys:?}");
    }
    assert_eq!(value["tokens"][1][1], "paris");
}

fn write(
    name: &str,
    tensors: &[(&str, Vec<usize>, HostTensor)],
    meta: Option<(&str, &str)>,
) -> PathBuf {
    let views: Vec<(&str, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dims, t)| {
            (
                *n,
                TensorView::new(Dtype::F32, dims.clone(), t.as_bytes()).unwrap(),
            )
        })
        .collect();
    let meta = meta.map(|(k, v)| [(k.to_string(), v.to_string())].into_iter().collect());
    let path = temp(name);
    std::fs::write(&path, safetensors::serialize(views, meta).unwrap()).unwrap();
    path
}

fn assert_refused(path: &PathBuf, message: &str) {
    let out = tool(&["inspect", path.to_str().unwrap()]);
    std::fs::remove_file(path).ok();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(message), "expected {message:?} in {stderr}");
    assert!(!stderr.contains("panicked"));
}

#[test]
fn a_file_without_layers() {
    let x = HostTensor::F32(vec![0.0; 8]);
    let path = write("nolayers", &[("q", vec![1, 1, 1, 8], x)], None);
    assert_refused(&path, "tensor `layers.0.q` is missing");
}

#[test]
fn a_layer_without_values() {
    let x = HostTensor::F32(vec![0.5; 16]);
    let dims = vec![1, 2, 1, 8];
    let path = write(
        "nov",
        &[
            ("layers.0.q", dims.clone(), x.clone()),
            ("layers.0.k", dims, x),
        ],
        None,
    );
    assert_refused(&path, "tensor `layers.0.v` is missing");
}

#[test]
fn tokens_that_do_not_match_the_keys() {
    let x = HostTensor::F32(vec![0.5; 16]);
    let dims = vec![1, 2, 1, 8];
    let tensors = [
        ("layers.0.q", dims.clone(), x.clone()),
        ("layers.0.k", dims.clone(), x.clone()),
        ("layers.0.v", dims, x),
    ];
    let path = write(
        "tok-len",
        &tensors,
        Some(("tokens", r#"[["a", "b", "c"]]"#)),
    );
    assert_refused(&path, "metadata `tokens`: expected 1 arrays of 2 tokens");
    let path = write("tok-json", &tensors, Some(("tokens", "not json")));
    assert_refused(&path, "metadata `tokens`: expected a JSON array");
}
