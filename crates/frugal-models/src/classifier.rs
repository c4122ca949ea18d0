//! The classifier: an MLP (dense blocks) or a small CNN (conv–ReLU–pool stages) mapping a
//! sample to class logits, trained with cross-entropy. Each hidden layer is one block of
//! the checkpointed stack.

use std::cell::Cell;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{log_softmax, relu};
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, FloatDType, Int, Tensor, TensorData};
use frugal_store::{Batch, DType, Schema};
use frugal_train::checkpoint::{
    Block, Carry, Ctx, eval_forward, plain_backward, segmented_backward,
};
use frugal_train::{EvalOutput, Precision, Result, StepInput, StepOutput, Task, TrainError};
use serde::{Deserialize, Serialize};

/// The architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    /// Fully connected blocks.
    Mlp,
    /// 3×3 convolution, ReLU and 2×2 max-pool per block.
    Cnn,
}

/// A dense block: linear, ReLU, dropout.
#[derive(Module, Debug)]
pub struct Dense {
    linear: Linear,
    dropout: f64,
}

impl Block<Tensor<2>> for Dense {
    fn forward(&self, x: Tensor<2>, ctx: &Ctx) -> Tensor<2> {
        ctx.dropout(relu(self.linear.forward(x)), self.dropout)
    }
}

/// A convolutional stage: 3×3 convolution (same padding), ReLU, 2×2 max-pool, dropout.
#[derive(Module, Debug)]
pub struct ConvStage {
    conv: Conv2d,
    dropout: f64,
}

impl Block<Tensor<4>> for ConvStage {
    fn forward(&self, x: Tensor<4>, ctx: &Ctx) -> Tensor<4> {
        let y = relu(self.conv.forward(x));
        let y = max_pool2d(y, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
        ctx.dropout(y, self.dropout)
    }
}

/// A multi-layer perceptron: dense blocks then a linear head.
#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers.
    pub blocks: Vec<Dense>,
    /// Output layer.
    pub head: Linear,
}

/// A small CNN: conv stages then a linear head on the flattened feature map.
#[derive(Module, Debug)]
pub struct Cnn {
    /// Conv stages.
    pub blocks: Vec<ConvStage>,
    /// Output layer.
    pub head: Linear,
}

/// The network.
#[derive(Module, Debug)]
pub enum Net {
    /// An MLP.
    Mlp(Mlp),
    /// A CNN.
    Cnn(Cnn),
}

/// The classifier task: which columns, how many classes, which network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classifier {
    /// Architecture.
    pub arch: Arch,
    /// Widths (MLP) or channel counts (CNN) of the hidden blocks.
    pub hidden: Vec<usize>,
    /// Dropout probability after each block.
    pub dropout: f64,
    /// Classes.
    pub classes: usize,
    /// Input column.
    pub input: String,
    /// Label column.
    pub label: String,
    /// Shape of one input sample (`[features]`, `[h, w]` or `[c, h, w]`).
    pub input_shape: Vec<usize>,
    /// Scale applied to inputs (1/255 for bytes).
    pub input_scale: f32,
}

impl Classifier {
    /// A classifier for the dataset `schema`, reading `input` and `label`; checks that
    /// the columns exist and can be used.
    pub fn for_schema(
        arch: Arch,
        hidden: Vec<usize>,
        dropout: f64,
        classes: usize,
        schema: &Schema,
        input: &str,
        label: &str,
    ) -> Result<Self> {
        let names = || {
            schema
                .columns
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let find = |name: &str| {
            schema
                .columns
                .iter()
                .find(|c| c.name == name)
                .ok_or_else(|| TrainError::MissingColumn {
                    column: name.into(),
                    hint: format!(" (it has {}); set `data.input` / `data.label`", names()),
                })
        };
        let x = find(input)?;
        let y = find(label)?;
        let input_scale = match x.dtype {
            DType::U8 => 1.0 / 255.0,
            DType::F32 | DType::F64 | DType::F16 | DType::BF16 => 1.0,
            other => {
                return Err(TrainError::Column {
                    column: input.into(),
                    problem: format!(
                        "holds {other:?}; the classifier reads u8 (scaled to [0, 1]) or floats"
                    ),
                });
            }
        };
        if !matches!(
            y.dtype,
            DType::U8 | DType::I8 | DType::I16 | DType::I32 | DType::I64 | DType::U16 | DType::U32
        ) || !y.shape.is_empty()
        {
            return Err(TrainError::Column {
                column: label.into(),
                problem: format!(
                    "holds {:?} × {:?}; labels are one integer per sample",
                    y.dtype, y.shape
                ),
            });
        }
        if arch == Arch::Cnn && !(2..=3).contains(&x.shape.len()) {
            return Err(TrainError::Column {
                column: input.into(),
                problem: format!(
                    "has shape {:?}; a CNN needs image samples ([h, w] or [c, h, w]): use `arch = \"mlp\"`",
                    x.shape
                ),
            });
        }
        let c = Self {
            arch,
            hidden,
            dropout,
            classes,
            input: input.into(),
            label: label.into(),
            input_shape: x.shape.clone(),
            input_scale,
        };
        if arch == Arch::Cnn {
            let (_, h, w) = c.image();
            let shrink = 1usize << c.hidden.len().min(31);
            if h < shrink || w < shrink {
                return Err(TrainError::Setting {
                    key: "model.hidden".into(),
                    value: format!("{:?}", c.hidden),
                    problem: format!(
                        "{} conv stages halve a {h}×{w} image below one pixel; use fewer stages",
                        c.hidden.len()
                    ),
                });
            }
        }
        Ok(c)
    }

    /// Features per sample.
    pub fn features(&self) -> usize {
        self.input_shape.iter().product::<usize>().max(1)
    }

    /// Channels, height and width of an image input.
    pub fn image(&self) -> (usize, usize, usize) {
        match self.input_shape.as_slice() {
            [h, w] => (1, *h, *w),
            [c, h, w] => (*c, *h, *w),
            _ => (1, 1, self.features()),
        }
    }

    /// Flattened features entering the CNN head.
    fn cnn_head_inputs(&self) -> usize {
        let (_, mut h, mut w) = self.image();
        for _ in &self.hidden {
            h /= 2;
            w /= 2;
        }
        self.hidden.last().copied().unwrap_or(1) * h * w
    }

    pub(crate) fn inputs(
        &self,
        batch: &Batch,
        precision: Precision,
        device: &Device,
    ) -> Result<Tensor<2>> {
        let col = batch
            .column(&self.input)
            .ok_or_else(|| TrainError::MissingColumn {
                column: self.input.clone(),
                hint: String::new(),
            })?;
        let n = batch.samples;
        let f = self.features();
        let values: Vec<f32> = match col.dtype {
            DType::U8 => col
                .bytes()
                .iter()
                .map(|&b| b as f32 * self.input_scale)
                .collect(),
            DType::F32 => col.as_slice::<f32>().expect("f32 column").to_vec(),
            DType::F64 => col
                .as_slice::<f64>()
                .expect("f64 column")
                .iter()
                .map(|&v| v as f32)
                .collect(),
            DType::F16 | DType::BF16 => {
                let data = TensorData::from_bytes_vec(
                    col.bytes().to_vec(),
                    [n * f],
                    if col.dtype == DType::F16 {
                        burn::tensor::DType::F16
                    } else {
                        burn::tensor::DType::BF16
                    },
                );
                data.convert::<f32>()
                    .try_into_vec::<f32>()
                    .map_err(|e| TrainError::Column {
                        column: self.input.clone(),
                        problem: format!("cannot be read as f32: {e:?}"),
                    })?
            }
            other => {
                return Err(TrainError::Column {
                    column: self.input.clone(),
                    problem: format!("holds {other:?}; the classifier reads u8 or floats"),
                });
            }
        };
        let x = Tensor::<2>::from_data(TensorData::new(values, [n, f]), device);
        Ok(precision.cast(x))
    }

    pub(crate) fn targets(&self, batch: &Batch, device: &Device) -> Result<Tensor<1, Int>> {
        let col = batch
            .column(&self.label)
            .ok_or_else(|| TrainError::MissingColumn {
                column: self.label.clone(),
                hint: String::new(),
            })?;
        let b = col.bytes();
        let labels: Vec<i64> = match col.dtype {
            DType::U8 => b.iter().map(|&v| v as i64).collect(),
            DType::I8 => b.iter().map(|&v| v as i8 as i64).collect(),
            DType::I16 => b
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::U16 => b
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]) as i64)
                .collect(),
            DType::I32 => b
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            DType::U32 => b
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                .collect(),
            _ => b
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect(),
        };
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= self.classes as i64) {
            return Err(TrainError::Column {
                column: self.label.clone(),
                problem: format!(
                    "holds label {bad}, outside [0, {}); set `model.classes` to the number of classes",
                    self.classes
                ),
            });
        }
        let n = labels.len();
        Ok(Tensor::<1, Int>::from_data(
            TensorData::new(labels, [n]),
            device,
        ))
    }

    fn to_image(&self, x: Tensor<2>) -> Tensor<4> {
        let (c, h, w) = self.image();
        let n = x.dims()[0];
        x.reshape([n, c, h, w])
    }
}

/// Mean cross-entropy of `logits` (computed in f32 whatever the compute precision) and the
/// number of right answers, both left on the device.
fn cross_entropy(logits: Tensor<2>, targets: Tensor<1, Int>) -> (Tensor<1>, Tensor<1, Int>) {
    let logits = logits.cast(FloatDType::F32);
    let n = targets.dims()[0];
    let targets = targets.reshape([n, 1]);
    let correct = logits.clone().argmax(1).equal(targets.clone()).int().sum();
    let picked = log_softmax(logits, 1).gather(1, targets);
    (picked.mean().neg(), correct)
}

fn backward<A: Carry, B: Block<A>>(
    blocks: &[B],
    head: &Linear,
    x: A,
    input: StepInput<'_>,
    scale: f64,
    flatten: impl Fn(A) -> Tensor<2>,
    targets: Tensor<1, Int>,
) -> (Tensor<1>, burn::optim::GradientsParams, Tensor<1, Int>) {
    let correct = Cell::new(None);
    let loss = |head: &Linear, h: A| {
        let (l, c) = cross_entropy(head.forward(flatten(h)), targets);
        correct.set(Some(c));
        if scale == 1.0 { l } else { l * scale }
    };
    let g = match input.segments {
        Some(s) => segmented_backward(blocks, head, x, s, input.seed, loss),
        None => plain_backward(blocks, head, x, input.seed, loss),
    };
    let loss = if scale == 1.0 { g.loss } else { g.loss / scale };
    let correct = correct.take().expect("the loss was computed");
    (loss, g.grads, correct)
}

impl Task for Classifier {
    type Model = Net;
    /// Inputs (cast to the compute precision) and labels.
    type Input = (Tensor<2>, Tensor<1, Int>);

    /// One per hidden layer.
    fn blocks(&self) -> usize {
        self.hidden.len()
    }

    fn init(&self, device: &Device) -> Net {
        match self.arch {
            Arch::Mlp => {
                let mut width = self.features();
                let blocks = self
                    .hidden
                    .iter()
                    .map(|&h| {
                        let b = Dense {
                            linear: LinearConfig::new(width, h).init(device),
                            dropout: self.dropout,
                        };
                        width = h;
                        b
                    })
                    .collect();
                Net::Mlp(Mlp {
                    blocks,
                    head: LinearConfig::new(width, self.classes).init(device),
                })
            }
            Arch::Cnn => {
                let mut channels = self.image().0;
                let blocks = self
                    .hidden
                    .iter()
                    .map(|&c| {
                        let b = ConvStage {
                            conv: Conv2dConfig::new([channels, c], [3, 3])
                                .with_padding(PaddingConfig2d::Same)
                                .init(device),
                            dropout: self.dropout,
                        };
                        channels = c;
                        b
                    })
                    .collect();
                Net::Cnn(Cnn {
                    blocks,
                    head: LinearConfig::new(self.cnn_head_inputs(), self.classes).init(device),
                })
            }
        }
    }

    fn prepare(&self, batch: &Batch, input: StepInput<'_>) -> Result<Self::Input> {
        let x = self.inputs(batch, input.precision, input.device)?;
        let targets = self.targets(batch, input.device)?;
        Ok((x, targets))
    }

    fn step(
        &self,
        model: &Net,
        (x, targets): Self::Input,
        input: StepInput<'_>,
        loss_scale: f64,
    ) -> Result<StepOutput> {
        let samples = targets.dims()[0];
        let (loss, grads, correct) = match model {
            Net::Mlp(Mlp { blocks, head }) => {
                backward(blocks, head, x, input, loss_scale, |h| h, targets)
            }
            Net::Cnn(Cnn { blocks, head }) => {
                let flatten = |h: Tensor<4>| {
                    let n = h.dims()[0];
                    h.reshape([n as i32, -1])
                };
                backward(
                    blocks,
                    head,
                    self.to_image(x),
                    input,
                    loss_scale,
                    flatten,
                    targets,
                )
            }
        };
        Ok(StepOutput {
            loss,
            grads,
            correct: Some(correct),
            samples,
            solves: Default::default(),
        })
    }

    fn eval(&self, model: &Net, batch: &Batch, device: &Device) -> Result<EvalOutput> {
        let device = device.clone().without_autodiff();
        let x = self.inputs(batch, Precision::F32, &device)?;
        let targets = self.targets(batch, &device)?;
        let logits = match model {
            Net::Mlp(Mlp { blocks, head }) => head.forward(eval_forward(blocks, x)),
            Net::Cnn(Cnn { blocks, head }) => {
                let h = eval_forward(blocks, self.to_image(x));
                let n = h.dims()[0];
                head.forward(h.reshape([n as i32, -1]))
            }
        };
        let (loss, correct) = cross_entropy(logits, targets);
        Ok(EvalOutput {
            loss_sum: loss * batch.samples as f64,
            correct: Some(correct),
            samples: batch.samples,
        })
    }
}
