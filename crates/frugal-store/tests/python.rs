//! A shard opens in Python with `safetensors.numpy.load_file` as it is, with the values
//! written. numpy has no bfloat16 of its own: `import ml_dtypes` gives it one, as it does
//! for JAX. Skipped when these packages are missing, unless FRUGAL_REQUIRE_PYTHON=1 (as in
//! CI), where their absence fails the test.

mod common;

use std::process::Command;

use frugal_store::{Column, DType, DatasetWriter, Schema, WriterOptions};

#[test]
fn shards_load_in_python_with_the_written_values() {
    if !common::python_ready("numpy, safetensors.numpy, ml_dtypes") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let schema = Schema::new(vec![
        Column::new("label", DType::U8, []),
        Column::new("x", DType::F32, [2, 3]),
        Column::new("d", DType::F64, []),
        Column::new("h", DType::F16, [2]),
        Column::new("b", DType::BF16, [2]),
        Column::new("i", DType::I64, []),
        Column::new("j", DType::I32, [1]),
        Column::new("ok", DType::Bool, []),
    ])
    .unwrap();
    let mut w = DatasetWriter::create(tmp.path(), schema, WriterOptions::default()).unwrap();
    for n in 0..100u32 {
        let x: Vec<u8> = (0..6)
            .flat_map(|k| (n as f32 * 6.0 + k as f32).to_le_bytes())
            .collect();
        // f16 and bf16 bits of small integers: exact in both formats.
        let h: Vec<u8> = [n, n + 1]
            .iter()
            .flat_map(|&v| f16_bits(v as f32).to_le_bytes())
            .collect();
        let b: Vec<u8> = [n, 2 * n]
            .iter()
            .flat_map(|&v| (((v as f32).to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        w.push_sample(&[
            &[(n % 10) as u8],
            &x,
            &(n as f64 / 4.0).to_le_bytes(),
            &h,
            &b,
            &(-(n as i64) * 1_000_000_007).to_le_bytes(),
            &(n as i32 - 50).to_le_bytes(),
            &[(n % 3 == 0) as u8],
        ])
        .unwrap();
    }
    w.finish().unwrap();
    let script = r#"
import sys, numpy as np
import ml_dtypes  # registers bfloat16 with numpy
from safetensors.numpy import load_file
t = load_file(sys.argv[1])
n = np.arange(100)
assert t["label"].dtype == np.uint8 and (t["label"] == n % 10).all()
assert t["x"].shape == (100, 2, 3) and t["x"].dtype == np.float32
assert (t["x"].reshape(100, 6) == (n[:, None] * 6 + np.arange(6)).astype(np.float32)).all()
assert (t["d"] == n / 4.0).all()
assert t["h"].dtype == np.float16 and (t["h"] == np.stack([n, n + 1], 1)).all()
assert t["b"].dtype == ml_dtypes.bfloat16 and t["b"].shape == (100, 2)
assert (t["b"].astype(np.float32) == np.stack([n, 2 * n], 1)).all()
assert (t["i"] == -n * 1_000_000_007).all()
assert t["j"].shape == (100, 1) and (t["j"][:, 0] == n - 50).all()
assert t["ok"].dtype == np.bool_ and (t["ok"] == (n % 3 == 0)).all()
print("ok")
"#;
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(tmp.path().join("shard-000000.safetensors"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

/// f16 bits of a small non-negative integer (exact).
fn f16_bits(v: f32) -> u16 {
    if v == 0.0 {
        return 0;
    }
    let bits = v.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127 + 15;
    let mantissa = (bits >> 13) & 0x3ff;
    ((exp as u32) << 10 | mantissa) as u16
}
