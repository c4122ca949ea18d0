//! tract against ONNX Runtime, the runtime these models are also used with: the same rows
//! must give the same outputs. And models the `onnx` package writes with the wrong shape or
//! type are refused with a reason. Skipped when the Python packages are missing, unless
//! FRUGAL_REQUIRE_PYTHON=1 (as in CI), where their absence fails the test.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use frugal_onnx::{OnnxError, OnnxModel};

/// `scripts/onnx_reference.py` on `rows`, as float32 `[batch, inputs]` in JSON.
fn onnxruntime(model: &Path, rows: &[Vec<f32>]) -> Vec<Vec<f64>> {
    let mut child = Command::new("python3")
        .arg(common::repo_root().join("scripts/onnx_reference.py"))
        .arg(model)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = serde_json::to_vec(rows).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "onnx_reference.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn tract_matches_onnxruntime_on_a_grid_of_the_valid_inputs() {
    if !common::python_ready("numpy, onnxruntime") {
        return;
    }
    let path = common::oscillator_path();
    let model = OnnxModel::load(&path).unwrap();
    let mut rows = Vec::new();
    for i in 0..15 {
        for j in 0..15 {
            rows.push(vec![
                0.1 + 1.4 * i as f32 / 14.0,
                0.5 + 4.5 * j as f32 / 14.0,
            ]);
        }
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let ours = model.run(&flat, rows.len()).unwrap();
    let reference = onnxruntime(&path, &rows);
    assert_eq!(reference.len(), rows.len());
    for ((row, got), want) in rows.iter().zip(ours.chunks(3)).zip(&reference) {
        assert_eq!(want.len(), 3);
        for (&g, &w) in got.iter().zip(want) {
            // Relative to the value, or to 1 for values near zero (a critically damped
            // overshoot), where a relative test would ask for more than float32 holds.
            assert!(
                (g as f64 - w).abs() <= 1e-5 * w.abs().max(1.0),
                "{row:?}: tract {got:?}, onnxruntime {want:?}"
            );
        }
    }
}

/// Writes a one-node Identity model with input and output `[dims]` of ONNX element type
/// `elem` (1 = float, 7 = int64), through the `onnx` package.
fn identity_model(path: &Path, elem: u8, dims: &str) {
    let script = r#"
import sys, onnx
from onnx import helper
elem, dims = int(sys.argv[2]), eval(sys.argv[3])
x = helper.make_tensor_value_info("x", elem, dims)
y = helper.make_tensor_value_info("y", elem, dims)
g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
m.ir_version = 8
onnx.save(m, sys.argv[1])
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(path)
        .arg(elem.to_string())
        .arg(dims)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn refusal(path: &Path) -> String {
    let err = OnnxModel::load(path).unwrap_err();
    assert!(matches!(err, OnnxError::Unsupported { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&*path.to_string_lossy()), "{message}");
    message
}

#[test]
fn models_that_are_not_batches_of_float_rows_are_refused() {
    if !common::python_ready("onnx") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();

    let rank3 = tmp.path().join("rank3.onnx");
    identity_model(&rank3, 1, r#"["N", 2, 3]"#);
    assert!(refusal(&rank3).contains("rank 3"));

    let ints = tmp.path().join("ints.onnx");
    identity_model(&ints, 7, r#"["N", 2]"#);
    assert!(refusal(&ints).contains("not float32"));

    let open = tmp.path().join("open.onnx");
    identity_model(&open, 1, r#"["N", "K"]"#);
    assert!(refusal(&open).contains("column count is not fixed"));

    // A batch fixed in the file is made variable: an identity of [1, 4] runs any batch.
    let fixed = tmp.path().join("fixed.onnx");
    identity_model(&fixed, 1, "[1, 4]");
    let model = OnnxModel::load(&fixed).unwrap();
    assert_eq!((model.inputs(), model.outputs()), (4, 4));
    assert!(model.input_names().is_none());
    let rows: Vec<f32> = (0..12).map(|k| k as f32).collect();
    assert_eq!(model.run(&rows, 3).unwrap(), rows);
}
