//! An ARM is a causal network + a per-dimension distribution + an ordering (raster order, here):
//! p(x) = Π_d p(x_d | θ_d(x_<d)). One file per network family; this file holds the shared interface.

pub mod causal_conv;
pub mod gated_pixelcnn;
pub mod image_head;
pub mod mlp;
pub mod pixelcnn;
pub mod rnn;
pub mod wavenet;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::likelihood::Likelihood;
use crate::limits;
pub use crate::nn::{Arithmetic, Mode};
use crate::params::ParamStore;

/// The shared causal network of an ARM.
pub trait CausalNet: Send + Sync {
    /// x `[B, D]` (u32 values) → θ `[B, D, P]`, where row d depends only on x_<d.
    fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor>;
    /// How many previous positions θ_d can see (D if all of them); for images, the pixels the last one sees.
    fn receptive_field(&self) -> usize;
    /// The number of classes a class-conditional network is conditioned on.
    fn num_classes(&self) -> Option<usize> {
        None
    }
    /// A cached, position-by-position evaluator for `batch` examples (with their class labels, for
    /// class-conditional networks; checked by the caller), where the family has one (Fast WaveNet-style
    /// caching: one column of computation per position instead of a full pass), computing in `arithmetic`
    /// (families without an exact mode refuse [`Arithmetic::Exact`] with [`Error::NoExactMode`]).
    fn stepper(
        &self,
        _batch: usize,
        _labels: Option<&[u32]>,
        _arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        Ok(None)
    }
    /// `forward` with a class label per example, `[B]` (u32), for class-conditional networks.
    fn forward_labelled(&self, x: &Tensor, labels: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        check_labels(None, labels, x.dim(0)?)?;
        self.forward(x, mode)
    }
}

/// Computes θ one position at a time, keeping what earlier positions computed.
pub trait Stepper {
    /// θ at the next position d, `[B][P]`, given the values drawn at position d − 1 (`None` at d = 0).
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>>;
}

/// Labels must be given exactly to class-conditional models, one per example, each below `num_classes`.
pub(crate) fn check_labels(num_classes: Option<usize>, labels: Option<&Tensor>, batch: usize) -> Result<()> {
    match (num_classes, labels) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::Config(
            "this model is not class-conditional: it takes no labels".into(),
        )),
        (Some(n), None) => Err(Error::Config(format!(
            "this model is class-conditional: give a label in 0..{n} per example"
        ))),
        (Some(n), Some(l)) => {
            let v = l.to_vec1::<u32>()?;
            if v.len() != batch {
                return Err(Error::Config(format!("{} labels for {batch} examples", v.len())));
            }
            match v.iter().find(|&&c| c as usize >= n) {
                Some(c) => Err(Error::Config(format!("label {c} is outside 0..{}", n - 1))),
                None => Ok(()),
            }
        }
    }
}

/// How integer values enter the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum InputEncoding {
    /// The value as a float, unscaled (the seed's choice): one channel.
    #[default]
    Raw,
    /// The value divided by K−1, in [0, 1]: one channel.
    Scaled,
    /// A one-hot vector: K channels.
    OneHot,
}

impl InputEncoding {
    pub fn channels(&self, num_values: usize) -> usize {
        match self {
            InputEncoding::OneHot => num_values,
            _ => 1,
        }
    }

    /// Values `[B]` → their encodings `[B][C]` flattened, for stepping one position at a time.
    pub fn encode_values(&self, values: &[u32], num_values: usize) -> Vec<f32> {
        match self {
            InputEncoding::Raw => values.iter().map(|&v| v as f32).collect(),
            InputEncoding::Scaled => values
                .iter()
                .map(|&v| v as f32 / (num_values.max(2) - 1) as f32)
                .collect(),
            InputEncoding::OneHot => values
                .iter()
                .flat_map(|&v| (0..num_values).map(move |k| if k == v as usize { 1.0 } else { 0.0 }))
                .collect(),
        }
    }

    /// x `[B, D]` (u32) → `[B, D, C]` in `dtype`, channels-last.
    pub fn encode(&self, x: &Tensor, num_values: usize, dtype: DType) -> Result<Tensor> {
        let xf = x.to_dtype(dtype)?.unsqueeze(2)?;
        Ok(match self {
            InputEncoding::Raw => xf,
            InputEncoding::Scaled => (xf / (num_values.max(2) - 1) as f64)?,
            InputEncoding::OneHot => {
                let values = Tensor::arange(0u32, num_values as u32, x.device())?;
                x.unsqueeze(2)?
                    .broadcast_eq(&values.reshape((1, 1, num_values))?)?
                    .to_dtype(dtype)?
            }
        })
    }
}

/// Every model family, chosen by `kind = "..."` in a config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelConfig {
    /// The seed chapter's stack of causal 1-D convolutions (optionally dilated).
    CausalConv(causal_conv::Config),
    /// Finite memory: an MLP of the last m values.
    Mlp(mlp::Config),
    /// LSTM or GRU over the previous values.
    Rnn(rnn::Config),
    /// Gated residual blocks of dilated causal convolutions.
    Wavenet(wavenet::Config),
    /// Masked 2-D convolutions over an image in raster order.
    Pixelcnn(pixelcnn::Config),
    /// Vertical and horizontal gated stacks, no blind spot, optional class conditioning.
    GatedPixelcnn(gated_pixelcnn::Config),
}

/// Kernels wider than the data (`extent` positions) only ever read padding there, and absurd sizes would
/// only exhaust memory: both are refused, as are dilations beyond 2^20.
pub(crate) fn check_kernel_size(what: &str, kernel: usize, dilation: usize, extent: usize) -> Result<()> {
    if kernel > extent + 1 || dilation > 1 << 20 {
        return Err(Error::Config(format!(
            "{what}: kernel {kernel} (dilation {dilation}) is too large for data {extent} positions wide"
        )));
    }
    Ok(())
}

/// Dropout probabilities live in [0, 1).
/// For `skip_serializing_if`: settings left at their default stay out of a written config.
pub(crate) fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

pub(crate) fn check_dropout(p: f64) -> Result<()> {
    if !(0.0..1.0).contains(&p) {
        return Err(Error::Config(format!("dropout = {p} must be in [0, 1)")));
    }
    Ok(())
}

impl ModelConfig {
    /// Rejects settings that cannot be built or that would break causality: every size within its limit
    /// (see [`crate::limits`]) and the model's parameter count, estimated before anything is allocated, within
    /// [`limits::MAX_PARAMS`]. A config that passes can be built.
    pub fn validate(&self) -> Result<()> {
        self.check_limits()?;
        match self {
            ModelConfig::CausalConv(c) => c.validate(),
            ModelConfig::Mlp(c) => c.validate(),
            ModelConfig::Rnn(c) => c.validate(),
            ModelConfig::Wavenet(c) => c.validate(),
            ModelConfig::Pixelcnn(c) => c.validate(),
            ModelConfig::GatedPixelcnn(c) => c.validate(),
        }?;
        limits::check(
            "model parameters (estimated)",
            self.param_estimate(),
            limits::MAX_PARAMS,
        )
    }

    /// Each size a config gives, against its limit, so that the products below cannot overflow.
    fn check_limits(&self) -> Result<()> {
        use limits::*;
        let at_most = |what: &str, v: usize, limit: usize| check(format!("model.{what}"), wide(v), wide(limit));
        let seq = |k: usize, length: usize| -> Result<()> {
            at_most("num_values", k, MAX_NUM_VALUES)?;
            at_most("length", length, MAX_DIM)
        };
        // A dilation beyond the sequence only ever reads padding, and pads every layer by (kernel − 1) × it.
        let dilations = |d: &[usize], length: usize| -> Result<()> {
            at_most("dilations (layers)", d.len(), MAX_LAYERS)?;
            let limit = length.max(MAX_LAYERS);
            d.iter()
                .try_for_each(|&d| at_most("dilations entry (at most the length, or 1024)", d, limit))
        };
        let image = |k: usize, h: usize, w: usize, colors: usize, n_mix: Option<usize>| -> Result<()> {
            at_most("num_values", k, MAX_NUM_VALUES)?;
            at_most("height", h, MAX_SIDE)?;
            at_most("width", w, MAX_SIDE)?;
            at_most("colors", colors, 4)?;
            at_most("n_mix", n_mix.unwrap_or(1), MAX_COMPONENTS)?;
            at_most("height × width × colors", h * w * colors, MAX_DIM)
        };
        match self {
            ModelConfig::CausalConv(c) => {
                seq(c.num_values, c.length)?;
                at_most("hidden", c.hidden, MAX_WIDTH)?;
                at_most("kernel", c.kernel, c.length + 1)?;
                dilations(&c.dilations, c.length)
            }
            ModelConfig::Mlp(c) => {
                seq(c.num_values, c.length)?;
                at_most("hidden", c.hidden, MAX_WIDTH)?;
                at_most("memory", c.memory, MAX_DIM)
            }
            ModelConfig::Rnn(c) => {
                seq(c.num_values, c.length)?;
                at_most("hidden", c.hidden, MAX_WIDTH)?;
                at_most("embedding", c.embedding, MAX_WIDTH)
            }
            ModelConfig::Wavenet(c) => {
                seq(c.num_values, c.length)?;
                at_most("residual_channels", c.residual_channels, MAX_WIDTH)?;
                at_most("skip_channels", c.skip_channels, MAX_WIDTH)?;
                at_most("kernel", c.kernel, c.length + 1)?;
                dilations(&c.dilations, c.length)
            }
            ModelConfig::Pixelcnn(c) => {
                image(c.num_values, c.height, c.width, c.colors, c.n_mix)?;
                at_most("hidden", c.hidden, MAX_WIDTH)?;
                at_most("head_hidden", c.head_hidden, MAX_WIDTH)?;
                at_most("blocks", c.blocks, MAX_LAYERS)?;
                at_most("first_kernel", c.first_kernel, 2 * MAX_SIDE + 1)?;
                at_most("kernel", c.kernel, 2 * MAX_SIDE + 1)
            }
            ModelConfig::GatedPixelcnn(c) => {
                image(c.num_values, c.height, c.width, c.colors, c.n_mix)?;
                at_most("channels", c.channels, MAX_WIDTH)?;
                at_most("head_hidden", c.head_hidden, MAX_WIDTH)?;
                at_most("layers", c.layers, MAX_LAYERS)?;
                at_most("num_classes", c.num_classes.unwrap_or(1), MAX_CLASSES)?;
                at_most("first_kernel", c.first_kernel, 2 * MAX_SIDE + 1)?;
                at_most("kernel", c.kernel, 2 * MAX_SIDE + 1)
            }
        }
    }

    /// An upper estimate of the parameter count (within a small factor of the exact one, which only the built
    /// model knows), from sizes already checked by `check_limits`.
    pub fn param_estimate(&self) -> u128 {
        use limits::wide;
        let w = |n: usize| wide(n);
        // Outputs per position, whatever the likelihood (a pixel mixture has 10 per component).
        let out = match self.likelihood() {
            Likelihood::Categorical { num_values } => w(num_values),
            l @ Likelihood::LogisticMixture { n_mix, .. } => w(l.params_per_dim()) + 10 * w(n_mix),
        };
        let est = match self {
            ModelConfig::CausalConv(c) => {
                let (cin, h, l) = (w(c.input.channels(c.num_values)), w(c.hidden), w(c.dilations.len()));
                w(c.kernel) * (cin * h + l * h * h + h * out) + l * h + out
            }
            ModelConfig::Mlp(c) => {
                let (cin, h) = (w(c.input.channels(c.num_values)), w(c.hidden));
                w(c.memory) * cin * h + h + h * out + out
            }
            ModelConfig::Rnn(c) => {
                let (e, h) = (w(c.embedding), w(c.hidden));
                (w(c.num_values) + 1) * e + 4 * (e * h + h * h + 2 * h) + h * out + out
            }
            ModelConfig::Wavenet(c) => {
                let (cin, r, s, k) = (
                    w(c.input.channels(c.num_values)),
                    w(c.residual_channels),
                    w(c.skip_channels),
                    w(c.kernel),
                );
                let block = 2 * r * r * k + r * r + r * s + 4 * r + s;
                cin * r * k + w(c.dilations.len()) * block + s * s + s * out + r + s + out
            }
            ModelConfig::Pixelcnn(c) => {
                let (cin, h, hh) = (
                    w(c.input.channels(c.num_values) * c.colors),
                    w(c.hidden),
                    w(c.head_hidden),
                );
                let (k1, k) = (w(c.first_kernel), w(c.kernel));
                let block = h * h + h * h * k * k / 4 + 2 * h;
                cin * h * k1 * k1 + h + w(c.blocks) * block + h * hh + hh * out * w(c.colors) + hh
            }
            ModelConfig::GatedPixelcnn(c) => {
                let (cin, ch, hh) = (
                    w(c.input.channels(c.num_values) * c.colors),
                    w(c.channels),
                    w(c.head_hidden),
                );
                let (k1, k) = (w(c.first_kernel), w(c.kernel));
                let classes = w(c.num_classes.unwrap_or(0));
                let layer = |cin: u128, k: u128| {
                    2 * cin * ch * k * (k / 2 + 1)
                        + 2 * cin * ch * (k / 2 + 1)
                        + 4 * ch * ch
                        + ch * ch
                        + 4 * classes * ch
                        + 8 * ch
                };
                layer(cin, k1) + w(c.layers) * layer(ch, k) + ch * hh + hh * out * w(c.colors) + hh
            }
        };
        2 * est
    }

    /// Floats one layer computes per position (all its intermediate tensors), for the activation estimate.
    fn width(&self) -> usize {
        match self {
            ModelConfig::CausalConv(c) => c.hidden,
            ModelConfig::Mlp(c) => c.hidden + c.memory * c.input.channels(c.num_values),
            ModelConfig::Rnn(c) => 5 * c.hidden + c.embedding,
            ModelConfig::Wavenet(c) => 4 * c.residual_channels + c.skip_channels,
            ModelConfig::Pixelcnn(c) => 2 * c.hidden.max(c.head_hidden),
            ModelConfig::GatedPixelcnn(c) => 6 * c.channels.max(c.head_hidden),
        }
    }

    /// Layers whose activations a training step keeps.
    fn depth(&self) -> usize {
        match self {
            ModelConfig::CausalConv(c) => c.dilations.len(),
            ModelConfig::Mlp(_) | ModelConfig::Rnn(_) => 1,
            ModelConfig::Wavenet(c) => c.dilations.len() + 1,
            ModelConfig::Pixelcnn(c) => c.blocks + 1,
            ModelConfig::GatedPixelcnn(c) => c.layers + 1,
        }
    }

    /// An estimate of the memory a training step on `batch` examples needs for activations and their
    /// gradients, in bytes: every layer's tensors per position, its input and output, kept, differentiated
    /// and copied once (3 × f32).
    pub fn activation_bytes(&self, batch: usize) -> u128 {
        use limits::wide;
        let per_position = wide(self.width()) * wide(self.depth())
            + wide(self.likelihood().params_per_dim()) * 4
            + wide(self.num_values()) * 2;
        // A dilated causal convolution pads its input by (kernel − 1) × dilation positions.
        let pad = match self {
            ModelConfig::CausalConv(c) => c.kernel.saturating_sub(1) * c.dilations.iter().max().unwrap_or(&1),
            ModelConfig::Wavenet(c) => c.kernel.saturating_sub(1) * c.dilations.iter().max().unwrap_or(&1),
            _ => 0,
        };
        wide(batch) * (wide(self.dim()) + wide(pad)) * per_position * 4 * 3
    }

    pub fn num_values(&self) -> usize {
        match self {
            ModelConfig::CausalConv(c) => c.num_values,
            ModelConfig::Mlp(c) => c.num_values,
            ModelConfig::Rnn(c) => c.num_values,
            ModelConfig::Wavenet(c) => c.num_values,
            ModelConfig::Pixelcnn(c) => c.num_values,
            ModelConfig::GatedPixelcnn(c) => c.num_values,
        }
    }
    pub fn dim(&self) -> usize {
        match self {
            ModelConfig::CausalConv(c) => c.length,
            ModelConfig::Mlp(c) => c.length,
            ModelConfig::Rnn(c) => c.length,
            ModelConfig::Wavenet(c) => c.length,
            ModelConfig::Pixelcnn(c) => c.dim(),
            ModelConfig::GatedPixelcnn(c) => c.dim(),
        }
    }
    /// (colours, height, width) of the images a 2-D model draws; `None` for sequence models.
    pub fn image_shape(&self) -> Option<(usize, usize, usize)> {
        match self {
            ModelConfig::Pixelcnn(c) => Some((c.colors, c.height, c.width)),
            ModelConfig::GatedPixelcnn(c) => Some((c.colors, c.height, c.width)),
            _ => None,
        }
    }
    pub fn likelihood(&self) -> Likelihood {
        match self {
            ModelConfig::Pixelcnn(c) => c.likelihood(),
            ModelConfig::GatedPixelcnn(c) => c.likelihood(),
            _ => Likelihood::Categorical {
                num_values: self.num_values(),
            },
        }
    }
    /// The classes a class-conditional model is conditioned on; `None` for the others.
    pub fn num_classes(&self) -> Option<usize> {
        match self {
            ModelConfig::GatedPixelcnn(c) => c.num_classes,
            _ => None,
        }
    }
    /// The per-position distribution, in words (`armory info`).
    pub fn distribution(&self) -> String {
        let (colors, mixture) = match self {
            ModelConfig::Pixelcnn(c) => (c.colors, c.colour_mixture),
            ModelConfig::GatedPixelcnn(c) => (c.colors, c.colour_mixture),
            _ => (1, image_head::ColourMixture::default()),
        };
        match self.likelihood() {
            Likelihood::Categorical { num_values } => format!("categorical (softmax) over {num_values} values"),
            l @ Likelihood::LogisticMixture { num_values, n_mix } => {
                if image_head::is_pixel_mixture(colors, l, mixture) {
                    format!(
                        "PixelCNN++ RGB pixel mixture: {n_mix} discretized logistics over {num_values} bins shared \
                         by R, G and B, the means of G and B linear in the earlier colours"
                    )
                } else {
                    let each = if colors > 1 { " per colour" } else { "" };
                    format!(
                        "discretized logistic mixture (PixelCNN++) of {n_mix} components over {num_values} bins{each}"
                    )
                }
            }
        }
    }
    /// The dropout probability of the model, whatever its family.
    pub fn dropout_mut(&mut self) -> &mut f64 {
        match self {
            ModelConfig::CausalConv(c) => &mut c.dropout,
            ModelConfig::Mlp(c) => &mut c.dropout,
            ModelConfig::Rnn(c) => &mut c.dropout,
            ModelConfig::Wavenet(c) => &mut c.dropout,
            ModelConfig::Pixelcnn(c) => &mut c.dropout,
            ModelConfig::GatedPixelcnn(c) => &mut c.dropout,
        }
    }
}

/// An autoregressive model: a causal network, a likelihood, and the parameters they read.
pub struct Arm {
    config: ModelConfig,
    net: Box<dyn CausalNet>,
    likelihood: Likelihood,
    params: ParamStore,
    device: Device,
}

/// How a batch loss reduces over examples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    Mean,
    Sum,
}

impl Arm {
    /// Builds the model of `config` with fresh parameters drawn from `seed`.
    ///
    /// ```
    /// use armory::models::{causal_conv, Arm, ModelConfig};
    /// use candle_core::{DType, Device};
    ///
    /// // The seed ARM's network on 8×8 digits (17 values), with 8 channels instead of 256.
    /// let cfg = ModelConfig::CausalConv(causal_conv::Config { hidden: 8, ..Default::default() });
    /// let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
    /// assert_eq!((arm.dim(), arm.num_values()), (64, 17));
    /// assert_eq!(arm.receptive_field(), 25); // 4 layers of kernel 7: 1 + 4·6 positions
    /// # Ok::<(), armory::Error>(())
    /// ```
    pub fn new(config: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        config.validate()?;
        let params = ParamStore::new(seed);
        let vb = params.var_builder(dtype, device);
        let net: Box<dyn CausalNet> = match config {
            ModelConfig::CausalConv(c) => Box::new(causal_conv::CausalConvNet::new(c, vb)?),
            ModelConfig::Mlp(c) => Box::new(mlp::MlpNet::new(c, vb)?),
            ModelConfig::Rnn(c) => Box::new(rnn::RnnNet::new(c, vb)?),
            ModelConfig::Wavenet(c) => Box::new(wavenet::WaveNet::new(c, vb)?),
            ModelConfig::Pixelcnn(c) => Box::new(pixelcnn::PixelCnn::new(c, vb)?),
            ModelConfig::GatedPixelcnn(c) => Box::new(gated_pixelcnn::GatedPixelCnn::new(c, vb)?),
        };
        Ok(Self {
            config: config.clone(),
            net,
            likelihood: config.likelihood(),
            params,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
    pub fn likelihood(&self) -> &Likelihood {
        &self.likelihood
    }
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// D, the number of dimensions of one example.
    pub fn dim(&self) -> usize {
        self.config.dim()
    }
    /// K, the number of values each dimension takes.
    pub fn num_values(&self) -> usize {
        self.likelihood.num_values()
    }
    pub fn receptive_field(&self) -> usize {
        self.net.receptive_field()
    }
    /// A cached stepper for `batch` examples (one label each for class-conditional models), if the network
    /// family has one.
    pub fn stepper(&self, batch: usize, labels: Option<&[u32]>) -> Result<Option<Box<dyn Stepper + '_>>> {
        self.stepper_with(batch, labels, Arithmetic::Fast)
    }
    /// [`Arm::stepper`] computing in `arithmetic`: [`Arithmetic::Exact`] gives θ bit for bit the same on every
    /// machine, thread count and batch size (the codec's mode), or [`Error::NoExactMode`] for a family
    /// without it.
    pub fn stepper_with(
        &self,
        batch: usize,
        labels: Option<&[u32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        let tensor = labels
            .map(|l| Tensor::from_slice(l, l.len(), &self.device))
            .transpose()?;
        check_labels(self.num_classes(), tensor.as_ref(), batch)?;
        self.net.stepper(batch, labels, arithmetic)
    }
    /// Classes of a class-conditional model.
    pub fn num_classes(&self) -> Option<usize> {
        self.net.num_classes()
    }

    /// Checks that x is `[B, D]` with values in 0..K.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, d) = x.dims2()?;
        if d != self.dim() {
            return Err(Error::Config(format!(
                "input has {d} dimensions, the model has {}",
                self.dim()
            )));
        }
        let values = x.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
        if let Some((i, &v)) = values
            .iter()
            .enumerate()
            .find(|(_, &v)| v as usize >= self.num_values())
        {
            return Err(Error::ValueOutOfRange {
                value: v as i64,
                position: i % d,
                k: self.num_values(),
            });
        }
        Ok(())
    }

    /// θ for every position: x `[B, D]` (u32) → `[B, D, P]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.net.forward(x, mode)
    }

    /// θ given class labels `[B]` (class-conditional models; `None` otherwise).
    pub fn forward_labelled(&self, x: &Tensor, labels: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        self.net.forward_labelled(x, labels, mode)
    }

    /// log p(x) in nats: x `[B, D]` (u32) → `[B]`.
    ///
    /// ```
    /// use armory::models::{causal_conv, Arm, ModelConfig};
    /// use candle_core::{DType, Device, Tensor};
    ///
    /// let cfg = ModelConfig::CausalConv(causal_conv::Config { hidden: 8, ..Default::default() });
    /// let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
    /// let x = Tensor::zeros((2, arm.dim()), DType::U32, &Device::Cpu)?; // two blank digits
    /// let lp = arm.log_prob(&x)?.to_vec1::<f32>()?; // [2], nats
    /// assert!(lp[0] < 0.0 && lp[0] == lp[1]);
    /// # Ok::<(), armory::Error>(())
    /// ```
    pub fn log_prob(&self, x: &Tensor) -> Result<Tensor> {
        self.log_prob_labelled(x, None)
    }

    /// log p(x | label) in nats for class-conditional models (`labels` `[B]`), log p(x) otherwise.
    pub fn log_prob_labelled(&self, x: &Tensor, labels: Option<&Tensor>) -> Result<Tensor> {
        self.check_input(x)?;
        self.likelihood
            .log_prob(&self.net.forward_labelled(x, labels, Mode::Eval)?, x)
    }

    /// The training objective, −log p(x) reduced over the batch (values are assumed checked at load time).
    pub fn loss(&self, x: &Tensor, reduction: Reduction, mode: Mode) -> Result<Tensor> {
        self.loss_labelled(x, None, reduction, mode)
    }

    /// [`Arm::loss`] with class labels for class-conditional models.
    pub fn loss_labelled(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        reduction: Reduction,
        mode: Mode,
    ) -> Result<Tensor> {
        let nll = self
            .likelihood
            .log_prob(&self.net.forward_labelled(x, labels, mode)?, x)?
            .neg()?;
        Ok(match reduction {
            Reduction::Mean => nll.mean_all()?,
            Reduction::Sum => nll.sum_all()?,
        })
    }
}
