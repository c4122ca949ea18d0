//! ONNX inference on the CPU for frugal: a job can score its candidates with a small
//! trained network (a surrogate of a simulation, a physics-informed network) without a
//! C++ runtime, since [tract](https://github.com/sonos/tract) is pure Rust.
//!
//! The models this crate runs map a batch of parameter rows to a batch of metric rows: one
//! input, float32 `[N, inputs]`, and one output, float32 `[N, outputs]`, for any batch
//! size `N`. [`OnnxModel::load`] checks that shape, optimises the graph once for a variable
//! batch, and reads the column names a model may carry in its `metadata_props`
//! (`input_names`, `output_names`, comma separated). A loaded model is `Send + Sync`:
//! worker threads share one and call [`OnnxModel::run`] concurrently, each call with its
//! own scratch state.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{DimLike, Factoid};

/// Why a model could not be loaded or run. Every variant names the model file.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read (missing, unreadable).
    #[error("cannot read ONNX model {}: {cause}", path.display())]
    Read {
        /// The model file.
        path: PathBuf,
        /// What the file system said.
        cause: std::io::Error,
    },
    /// The file is not an ONNX model tract can parse.
    #[error("{} is not a valid ONNX model: {message}", path.display())]
    Parse {
        /// The model file.
        path: PathBuf,
        /// The parser's explanation.
        message: String,
    },
    /// The model parses but is not a batch-of-rows model: not exactly one input and one
    /// output, not float32, not rank 2, no fixed column count, or column names in its
    /// metadata that do not match its columns.
    #[error("ONNX model {}: {problem}", path.display())]
    Unsupported {
        /// The model file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The graph could not be typed and optimised for a variable batch size, for
    /// instance because an operator is unsupported or a shape is fixed to one batch.
    #[error("ONNX model {} cannot be prepared for a variable batch: {message}", path.display())]
    Prepare {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        message: String,
    },
    /// [`OnnxModel::run`] was given a number of values that is not `batch × inputs`.
    #[error(
        "ONNX model {}: {got} input values given for a batch of {batch} rows of {inputs}, \
         which needs {}",
        path.display(),
        batch.saturating_mul(*inputs)
    )]
    RowLength {
        /// The model file.
        path: PathBuf,
        /// Values given.
        got: usize,
        /// Rows requested.
        batch: usize,
        /// Values per row the model takes.
        inputs: usize,
    },
    /// Evaluating the graph failed.
    #[error("running ONNX model {}: {message}", path.display())]
    Run {
        /// The model file.
        path: PathBuf,
        /// tract's explanation.
        message: String,
    },
}

/// A loaded, optimised ONNX model that maps rows of `inputs` float32 values to rows of
/// `outputs` float32 values, for any number of rows.
pub struct OnnxModel {
    path: PathBuf,
    plan: Arc<TypedSimplePlan>,
    inputs: usize,
    outputs: usize,
    metadata: BTreeMap<String, String>,
    input_names: Option<Vec<String>>,
    output_names: Option<Vec<String>>,
}

/// Where tract files an ONNX `metadata_props` entry among a model's properties.
const METADATA_PREFIX: &str = "onnx.metadata_props.";

impl OnnxModel {
    /// Loads the model at `path` and optimises it for a variable batch size.
    ///
    /// The model must have one float32 input of shape `[N, inputs]` and one float32
    /// output of shape `[N, outputs]`; the batch dimension may be named (an ONNX
    /// `dim_param`) or fixed in the file, and is made variable here either way. If the
    /// metadata lists `input_names` or `output_names`, their count must match the columns.
    pub fn load(path: &Path) -> Result<Self, OnnxError> {
        let unsupported = |problem: String| OnnxError::Unsupported {
            path: path.to_owned(),
            problem,
        };
        // Read first so a missing file is reported as such, not as a parse failure.
        let bytes = std::fs::read(path).map_err(|cause| OnnxError::Read {
            path: path.to_owned(),
            cause,
        })?;
        let parse_error = |message: String| OnnxError::Parse {
            path: path.to_owned(),
            message,
        };
        let onnx = tract_onnx::onnx();
        let proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| parse_error(format!("{e:#}")))?;
        // Weights a model keeps in side files are named relative to the model's directory.
        let parsed = onnx
            .parse(&proto, path.parent().and_then(Path::to_str))
            .map_err(|e| parse_error(format!("{e:#}")))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(parse_error(format!(
                "nodes read values nothing produces: {:?}",
                parsed.unresolved_inputs
            )));
        }
        let mut model = parsed.model;

        if model.inputs.len() != 1 || model.outputs.len() != 1 {
            return Err(unsupported(format!(
                "has {} inputs and {} outputs; a model of rows has one of each",
                model.inputs.len(),
                model.outputs.len()
            )));
        }
        let fact = model
            .input_fact(0)
            .map_err(|e| unsupported(format!("{e:#}")))?
            .clone();
        match fact.datum_type.concretize() {
            Some(DatumType::F32) | None => {}
            Some(dt) => {
                return Err(unsupported(format!("input is {dt:?}, not float32")));
            }
        }
        match fact.shape.rank().concretize() {
            Some(2) => {}
            Some(rank) => {
                return Err(unsupported(format!(
                    "input has rank {rank}; a batch of rows is [N, inputs]"
                )));
            }
            None => {
                return Err(unsupported(
                    "input shape is not declared; a batch of rows is [N, inputs]".into(),
                ));
            }
        }
        let inputs = fact
            .shape
            .dim(1)
            .and_then(|d| d.concretize())
            .and_then(|d| d.as_usize())
            .ok_or_else(|| unsupported("input's column count is not fixed".into()))?;
        // Keep the file's own batch symbol so shapes elsewhere in the graph that name it
        // stay tied to the input; a fixed or unknown batch gets a fresh one.
        let batch = match fact.shape.dim(0).and_then(|d| d.concretize()) {
            Some(d @ TDim::Sym(_)) => d,
            _ => TDim::Sym(model.symbols.new_with_prefix("batch")),
        };
        model
            .set_input_fact(
                0,
                InferenceFact::dt_shape(DatumType::F32, [batch.clone(), inputs.to_dim()]),
            )
            .map_err(|e| unsupported(format!("{e:#}")))?;

        let metadata: BTreeMap<String, String> = model
            .properties
            .iter()
            .filter_map(|(key, value)| {
                let key = key.strip_prefix(METADATA_PREFIX)?;
                let value = value.try_as_plain_ram().ok()?.to_scalar::<String>().ok()?;
                Some((key.to_owned(), value.clone()))
            })
            .collect();

        let prepare = |e: TractError| OnnxError::Prepare {
            path: path.to_owned(),
            message: format!("{e:#}"),
        };
        let typed = model.into_optimized().map_err(prepare)?;
        let out = typed.output_fact(0).map_err(prepare)?;
        if out.datum_type != DatumType::F32 {
            return Err(unsupported(format!(
                "output is {:?}, not float32",
                out.datum_type
            )));
        }
        if out.rank() != 2 || out.shape[0] != batch {
            return Err(unsupported(format!(
                "output has shape {:?}; a batch of rows gives [N, outputs] for input [N, {inputs}]",
                out.shape
            )));
        }
        let outputs = out.shape[1]
            .as_usize()
            .ok_or_else(|| unsupported("output's column count is not fixed".into()))?;
        let plan = typed.into_runnable().map_err(prepare)?;

        let names = |key: &str, columns: usize| -> Result<Option<Vec<String>>, OnnxError> {
            let Some(list) = metadata.get(key) else {
                return Ok(None);
            };
            let names: Vec<String> = list.split(',').map(|s| s.trim().to_owned()).collect();
            if names.len() != columns {
                return Err(unsupported(format!(
                    "metadata {key} lists {} names ({list:?}) for {columns} columns",
                    names.len()
                )));
            }
            Ok(Some(names))
        };
        let input_names = names("input_names", inputs)?;
        let output_names = names("output_names", outputs)?;

        Ok(OnnxModel {
            path: path.to_owned(),
            plan,
            inputs,
            outputs,
            metadata,
            input_names,
            output_names,
        })
    }

    /// The file the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Values in one input row.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Values in one output row.
    pub fn outputs(&self) -> usize {
        self.outputs
    }

    /// The input columns' names, from the model's `input_names` metadata, if it has any.
    pub fn input_names(&self) -> Option<&[String]> {
        self.input_names.as_deref()
    }

    /// The output columns' names, from the model's `output_names` metadata, if it has any.
    pub fn output_names(&self) -> Option<&[String]> {
        self.output_names.as_deref()
    }

    /// One entry of the model's ONNX `metadata_props`.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).map(String::as_str)
    }

    /// All of the model's ONNX `metadata_props`, by key.
    pub fn metadata_entries(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Runs `batch` rows through the model: `rows` is row-major `[batch, inputs]`, the
    /// result row-major `[batch, outputs]`. Safe to call from many threads at once.
    pub fn run(&self, rows: &[f32], batch: usize) -> Result<Vec<f32>, OnnxError> {
        if batch.checked_mul(self.inputs) != Some(rows.len()) {
            return Err(OnnxError::RowLength {
                path: self.path.clone(),
                got: rows.len(),
                batch,
                inputs: self.inputs,
            });
        }
        if batch == 0 {
            return Ok(Vec::new());
        }
        let failed = |e: TractError| OnnxError::Run {
            path: self.path.clone(),
            message: format!("{e:#}"),
        };
        let input = Tensor::from_shape(&[batch, self.inputs], rows).map_err(failed)?;
        let outputs = self.plan.run(tvec!(input.into())).map_err(failed)?;
        let values = outputs[0]
            .try_as_plain_ram()
            .and_then(|view| view.as_slice::<f32>())
            .map_err(failed)?;
        if values.len() != batch * self.outputs {
            return Err(OnnxError::Run {
                path: self.path.clone(),
                message: format!(
                    "output has {} values for {batch} rows of {}",
                    values.len(),
                    self.outputs
                ),
            });
        }
        Ok(values.to_vec())
    }
}

impl fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxModel")
            .field("path", &self.path)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .field("input_names", &self.input_names)
            .field("output_names", &self.output_names)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_model_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<OnnxModel>();
    }
}
