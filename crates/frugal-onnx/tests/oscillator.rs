//! The committed damped-oscillator network: its shape and metadata, the errors a caller
//! sees for bad files and bad rows, batches against single rows, sharing between threads,
//! and its predictions against the closed-form physics it was fitted to.

mod common;

use std::f64::consts::PI;

use frugal_onnx::{OnnxError, OnnxModel};

fn oscillator() -> OnnxModel {
    OnnxModel::load(&common::oscillator_path()).unwrap()
}

/// (zeta, omega) pairs spread over the valid box, corners included.
fn grid() -> Vec<f32> {
    let mut rows = Vec::new();
    for i in 0..7 {
        for j in 0..6 {
            rows.push(0.1 + 1.4 * i as f32 / 6.0);
            rows.push(0.5 + 4.5 * j as f32 / 5.0);
        }
    }
    rows
}

#[test]
fn the_oscillator_has_two_named_inputs_and_three_named_outputs() {
    let model = oscillator();
    assert_eq!((model.inputs(), model.outputs()), (2, 3));
    assert_eq!(model.input_names().unwrap(), ["zeta", "omega"]);
    assert_eq!(
        model.output_names().unwrap(),
        ["overshoot", "ise", "energy_left"]
    );
    assert_eq!(model.metadata("input_min"), Some("0.1,0.5"));
    assert_eq!(model.metadata("input_max"), Some("1.5,5.0"));
    assert_eq!(fit_max_abs_error(&model).len(), 3);
    assert!(model.metadata("no such key").is_none());
}

#[test]
fn a_missing_file_is_named_in_the_error() {
    let path = common::repo_root().join("models/no-such-model.onnx");
    let err = OnnxModel::load(&path).unwrap_err();
    assert!(matches!(err, OnnxError::Read { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("no-such-model.onnx"), "{message}");
}

#[test]
fn a_file_that_is_not_onnx_is_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("notes.onnx");
    std::fs::write(&path, "this is a text file, not a protobuf\n").unwrap();
    let err = OnnxModel::load(&path).unwrap_err();
    assert!(matches!(err, OnnxError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("notes.onnx"), "{err}");
}

#[test]
fn rows_of_the_wrong_length_are_refused() {
    let model = oscillator();
    let err = model.run(&[0.5, 1.0, 0.7], 2).unwrap_err();
    assert!(
        matches!(
            err,
            OnnxError::RowLength {
                got: 3,
                batch: 2,
                inputs: 2,
                ..
            }
        ),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("oscillator.onnx") && message.contains("needs 4"),
        "{message}"
    );
    assert!(model.run(&[0.5, 1.0], 0).is_err());
    assert!(model.run(&[], usize::MAX).is_err());
}

#[test]
fn an_empty_batch_gives_no_rows() {
    assert!(oscillator().run(&[], 0).unwrap().is_empty());
}

#[test]
fn a_batch_agrees_with_its_rows_run_one_at_a_time() {
    let model = oscillator();
    let rows = grid();
    let batch = rows.len() / 2;
    let all = model.run(&rows, batch).unwrap();
    assert_eq!(all.len(), batch * 3);
    for (row, expected) in rows.chunks(2).zip(all.chunks(3)) {
        let one = model.run(row, 1).unwrap();
        // A single row and a batch may take different matrix kernels, which may round
        // differently in the last bits; they must not differ by more than that.
        for (a, b) in one.iter().zip(expected) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "{row:?}: {one:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn threads_share_one_model() {
    let model = oscillator();
    let rows = grid();
    let batch = rows.len() / 2;
    let expected = model.run(&rows, batch).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..20 {
                    assert_eq!(model.run(&rows, batch).unwrap(), expected);
                }
            });
        }
    });
}

/// The closed-form values the network was fitted to, for x(0) = 1, x'(0) = 0 in
/// x'' + 2 zeta omega x' + omega^2 x = 0: overshoot past equilibrium, the integral of x^2
/// (s), and the energy left at t = 1 s as a fraction of the initial energy.
fn physics(zeta: f64, omega: f64) -> [f64; 3] {
    let overshoot = if zeta < 1.0 {
        (-PI * zeta / (1.0 - zeta * zeta).sqrt()).exp()
    } else {
        0.0
    };
    let ise = (1.0 + 4.0 * zeta * zeta) / (4.0 * zeta * omega);
    // x = e^(-zeta omega t) (c + zeta omega s), x' = -e^(-zeta omega t) omega^2 s, with
    // c, s = cos(wd t), sin(wd t)/wd when under-damped, their hyperbolic forms when
    // over-damped, and 1, t at critical damping.
    let t = 1.0;
    let d = 1.0 - zeta * zeta;
    let wd = omega * d.abs().sqrt();
    let (c, s) = if d > 0.0 {
        ((wd * t).cos(), (wd * t).sin() / wd)
    } else if d < 0.0 {
        ((wd * t).cosh(), (wd * t).sinh() / wd)
    } else {
        (1.0, t)
    };
    let decay = (-zeta * omega * t).exp();
    let x = decay * (c + zeta * omega * s);
    let v = -decay * omega * omega * s;
    [overshoot, ise, x * x + v * v / (omega * omega)]
}

fn fit_max_abs_error(model: &OnnxModel) -> Vec<f64> {
    model
        .metadata("fit_max_abs_error")
        .unwrap()
        .split(',')
        .map(|e| e.parse().unwrap())
        .collect()
}

#[test]
fn the_closed_form_in_rust_is_the_one_the_network_was_fitted_to() {
    // Values the fitting script's closed forms give (the script checks those against a
    // Runge–Kutta integration of the equation of motion), so the Rust below is the
    // physics the network learnt.
    let cases = [
        ((0.2, 1.0), [0.526_620_599, 1.45, 0.835_454_081]),
        ((0.7, 3.0), [0.045_987_910, 0.352_380_952, 0.022_001_213]),
        ((1.0, 2.0), [0.0, 0.625, 0.238_103_306]),
        ((1.3, 0.7), [0.0, 2.131_868_132, 0.828_008_653]),
    ];
    for ((zeta, omega), expected) in cases {
        let got = physics(zeta, omega);
        for (g, e) in got.iter().zip(expected) {
            assert!(
                (g - e).abs() < 1e-8,
                "({zeta}, {omega}): {got:?} vs {expected:?}"
            );
        }
    }
}

#[test]
fn predictions_are_within_the_documented_fit_error_of_the_physics() {
    let model = oscillator();
    let bound = fit_max_abs_error(&model);
    // Under-damped, critical and over-damped points, the box's corners among them.
    let points: [(f32, f32); 9] = [
        (0.1, 0.5),
        (0.1, 5.0),
        (0.15, 0.7),
        (0.3, 2.0),
        (0.6, 4.5),
        (1.0, 1.0),
        (1.2, 2.5),
        (1.5, 0.5),
        (1.5, 5.0),
    ];
    let rows: Vec<f32> = points.iter().flat_map(|&(z, w)| [z, w]).collect();
    let predicted = model.run(&rows, points.len()).unwrap();
    for (&(zeta, omega), got) in points.iter().zip(predicted.chunks(3)) {
        let exact = physics(zeta as f64, omega as f64);
        for k in 0..3 {
            let err = (got[k] as f64 - exact[k]).abs();
            assert!(
                err <= bound[k],
                "zeta {zeta}, omega {omega}: output {k} is {} against {} (error {err}, bound {})",
                got[k],
                exact[k],
                bound[k]
            );
        }
    }
}
