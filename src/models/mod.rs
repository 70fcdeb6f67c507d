//! An ARM is a causal network + a per-dimension distribution + an ordering: p(x) = Π_d p(x_d | θ_d(x_<d)).
//! [`ModelConfig`] describes one — shape × network × likelihood, the ordering following from the shape — and
//! [`Arm`] is the built model. One file per network family (its settings and a [`Family`] implementation,
//! its network, its stepper), one line per family in the registry ([`families!`] below).

pub mod causal_conv;
pub mod dense;
pub mod gated_pixelcnn;
pub mod image_head;
pub mod mlp;
pub mod pixelcnn;
pub mod rnn;
pub mod wavenet;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::likelihood::Likelihood;
use crate::limits;
pub use crate::nn::{Arithmetic, Mode};
use crate::params::ParamStore;
pub use image_head::ColourMixture;
use image_head::{HeadStepper, ImageHead};

/// The shared causal network of an ARM.
pub trait CausalNet: Send + Sync {
    /// x `[B, D]` (u32 values) → θ `[B, D, P]`, where row d depends only on x_<d, given a class label per
    /// example `[B]` (u32, class-conditional networks) and a context vector per example `[B, E]` (the latent
    /// code of a latent-variable model, for the families that take one: see [`Family::takes_context`]); each
    /// network checks what it is given (an unconditioned one refuses both).
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, context: Option<&Tensor>, mode: Mode) -> Result<Tensor>;
    /// How many earlier positions θ_d can see (D − 1 if all of them: the last position's are the most); for
    /// images, the pixels (and earlier colours) the last one sees.
    fn receptive_field(&self) -> usize;
    /// The number of classes a class-conditional network is conditioned on.
    fn num_classes(&self) -> Option<usize> {
        None
    }
    /// A cached, position-by-position evaluator for `batch` examples (with their class labels, for
    /// class-conditional networks, and their context vectors `[B][E]` flattened, for those conditioned on
    /// one; checked by the caller), where the family has one (Fast WaveNet-style caching: one column of
    /// computation per position instead of a full pass), computing in `arithmetic` (families without an
    /// exact mode refuse [`Arithmetic::Exact`] with [`Error::NoExactMode`]).
    fn stepper(
        &self,
        _batch: usize,
        _labels: Option<&[u32]>,
        _context: Option<&[f32]>,
        _arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        Ok(None)
    }
}

/// A network conditioned on neither a class nor a context vector refuses labels and context.
fn unconditioned(labels: Option<&Tensor>, context: Option<&Tensor>) -> Result<()> {
    no_context(context.is_some())?;
    check_labels(None, labels, 0) // the batch size is only read for a class-conditional network
}

fn no_context(given: bool) -> Result<()> {
    match given {
        true => Err(Error::Invalid("this network takes no context vector".into())),
        false => Ok(()),
    }
}

/// A context `[B, E]` must be given exactly to the models conditioned on one (`context = E`), one row per
/// example.
pub(crate) fn check_context(size: usize, context: Option<&Tensor>, batch: usize) -> Result<()> {
    match (size, context) {
        (0, None) => Ok(()),
        (0, Some(_)) => Err(Error::Invalid("this model takes no context vector".into())),
        (e, None) => Err(Error::Invalid(format!(
            "this model is conditioned on a context of {e} numbers per example: give one"
        ))),
        (e, Some(c)) => match c.dims() {
            [b, w] if *b == batch && *w == e => Ok(()),
            dims => Err(Error::Invalid(format!(
                "the context has shape {dims:?}; the model needs [{batch}, {e}]"
            ))),
        },
    }
}

/// Computes θ one position at a time, keeping what earlier positions computed.
pub trait Stepper {
    /// θ at the next position d, `[B][P]`, given the values drawn at position d − 1 (`None` at d = 0).
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>>;
}

/// A network written once over a [`crate::nn::Flow`], and so a [`CausalNet`]: its forward pass runs the
/// network over whole sequences or images, its stepper one position at a time. An image network's output
/// is the stream its [`ImageHead`] turns into θ, the head stepping on its own.
pub trait FlowNet: Send + Sync {
    fn model(&self) -> &ModelConfig;
    /// The weights' dtype, which the input is encoded in.
    fn dtype(&self) -> DType;
    /// As [`CausalNet::receptive_field`].
    fn receptive_field(&self) -> usize;
    /// The encoded input, `[B, D, C]`, `[B, H, W, C]` or one position's `[B][C]`, → θ (sequences) or the
    /// stream the head reads (images).
    fn network<F: crate::nn::Flow>(&self, f: &mut F, x: F::Act) -> Result<F::Act>;
    /// The output head of an image network; none for sequences.
    fn head(&self) -> Option<&ImageHead> {
        None
    }
}

impl<N: FlowNet> CausalNet for N {
    fn forward(&self, x: &Tensor, labels: Option<&Tensor>, context: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        unconditioned(labels, context)?;
        let m = self.model();
        let mut flow = crate::nn::Full {
            mode,
            dropout: m.dropout,
        };
        let e = m.input.encode(x, m.num_values, self.dtype())?;
        let Some(head) = self.head() else {
            return self.network(&mut flow, e);
        };
        let (b, d) = x.dims2()?;
        if d != m.dim() {
            return Err(Error::Invalid(format!(
                "{}: input has {d} values per example, the model is {}×{}×{}",
                m.kind(),
                m.height(),
                m.width(),
                m.colors()
            )));
        }
        let e = e.reshape((b, m.height(), m.width(), ()))?;
        head.forward(&self.network(&mut flow, e)?, x)
    }
    fn receptive_field(&self) -> usize {
        FlowNet::receptive_field(self)
    }
    fn stepper(
        &self,
        batch: usize,
        _: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        no_context(context.is_some())?;
        // An image network steps in the model's order; a sequence network reads any shape as one sequence of
        // its D values (one row of one colour), and steps so.
        let m = self.model();
        let order = match self.head() {
            Some(_) => m.ordering(),
            None => Ordering {
                height: 1,
                width: m.dim(),
                colors: 1,
            },
        };
        Ok(Some(Box::new(Stepped {
            net: self,
            flow: crate::nn::Stepping::new((order.height, order.width), batch, arithmetic),
            head: self.head().map(|h| h.stepper(batch, arithmetic)).transpose()?,
            order,
            d: 0,
            pixel: vec![],
        })))
    }
}

/// A [`FlowNet`] run one position at a time.
struct Stepped<'a, N> {
    net: &'a N,
    flow: crate::nn::Stepping,
    head: Option<HeadStepper>,
    order: Ordering,
    d: usize,
    pixel: Vec<f32>, // the encoded colours of the last pixel drawn from, `[B][colours·E]`
}

impl<N: FlowNet> Stepper for Stepped<'_, N> {
    /// Step d is colour d % colors of pixel d / colors (a sequence: one colour a pixel): the value drawn at
    /// d − 1 enters its pixel, and the pixel's column is computed (again, for each colour of a colour image
    /// with colour masks, which keep the colours not drawn yet out of it; once, at R, with the pixel
    /// mixture, whose later colours come from the head alone).
    fn step(&mut self, prev: Option<&[u32]>) -> Result<Vec<Vec<f32>>> {
        let (m, d, order) = (self.net.model(), self.d, self.order);
        self.d += 1;
        if let Some(prev) = prev {
            let (_, colour) = order.pixel_and_colour(d - 1);
            record_colour(&mut self.pixel, m, order.colors, prev, colour);
            if let Some(head) = &mut self.head {
                head.record(prev, colour);
            }
        }
        let (at, colour) = order.pixel_and_colour(d);
        if let Some(head) = self.head.as_mut().filter(|h| !h.needs_column(colour)) {
            return head.step(None, colour);
        }
        let from = order.pixel_and_colour(d.saturating_sub(1)).0;
        let x = self.flow.input(at..at + 1, from..from + 1, self.pixel.clone());
        let out = self.net.network(&mut self.flow, x)?;
        let out = self.flow.output(out);
        match &mut self.head {
            Some(head) => head.step(Some(out), colour),
            None => Ok(out.chunks(m.outputs_per_position()).map(<[f32]>::to_vec).collect()),
        }
    }
}

/// Colour `colour` of a pixel of `colors` drawn (`values` `[B]`), encoded, into the pixel's inputs
/// `[B][colours·E]` (a new pixel from colour 0).
pub(crate) fn record_colour(pixel: &mut Vec<f32>, m: &ModelConfig, colors: usize, values: &[u32], colour: usize) {
    let e = m.input.encode_values(values, m.num_values); // [B][E]
    let width = e.len() / values.len().max(1);
    if colour == 0 {
        *pixel = vec![0.0; colors * e.len()];
    }
    for (px, v) in pixel.chunks_mut(colors * width).zip(e.chunks(width)) {
        px[colour * width..(colour + 1) * width].copy_from_slice(v);
    }
}

/// Labels must be given exactly to class-conditional models, one per example, each below `num_classes`.
pub(crate) fn check_labels(num_classes: Option<usize>, labels: Option<&Tensor>, batch: usize) -> Result<()> {
    match (num_classes, labels) {
        (None, None) => Ok(()),
        (None, Some(_)) => Err(Error::Invalid(
            "this model is not class-conditional: it takes no labels".into(),
        )),
        (Some(n), None) => Err(Error::Invalid(format!(
            "this model is class-conditional: give a label in 0..{} per example",
            n.saturating_sub(1)
        ))),
        (Some(n), Some(l)) => {
            let v = l.to_vec1::<u32>()?;
            if v.len() != batch {
                return Err(Error::Invalid(format!("{} labels for {batch} examples", v.len())));
            }
            match v.iter().find(|&&c| c as usize >= n) {
                Some(c) => Err(Error::Invalid(format!("label {c} is outside 0..{}", n - 1))),
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

/// The registry of network families: one line each, `Variant(module::Config) = "kind"`. The `kind` names the
/// family in a config file (`kind = "wavenet"`) and on the command line; everything else a family is — its
/// settings, their checks, its estimates and how it is built — is its [`Family`] implementation, in its file.
macro_rules! families {
    ($($variant:ident($config:ty) = $kind:literal, $about:literal;)*) => {
        /// A network family and its own settings, chosen by `kind = "..."` in a config file.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind")]
        pub enum Network {
            $(#[doc = $about] #[serde(rename = $kind)] $variant($config),)*
        }

        impl Network {
            /// The family's interface.
            pub fn family(&self) -> &dyn Family {
                match self {
                    $(Network::$variant(c) => c,)*
                }
            }
            /// The family's name, as `kind` in a config file.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Network::$variant(_) => $kind,)*
                }
            }
            /// The family's interface, to change its settings.
            pub fn family_mut(&mut self) -> &mut dyn Family {
                match self {
                    $(Network::$variant(c) => c,)*
                }
            }
        }

        /// Every family: its `kind` and what it is, in words (`armory info --families`, `--help`).
        pub const FAMILIES: &[(&str, &str)] = &[$(($kind, $about),)*];
    };
}

families! {
    CausalConv(causal_conv::Config) = "causal_conv", "The seed chapter's stack of causal 1-D convolutions (optionally dilated).";
    Mlp(mlp::Config) = "mlp", "Finite memory: an MLP of the last m values.";
    Rnn(rnn::Config) = "rnn", "LSTM or GRU over the previous values.";
    Wavenet(wavenet::Config) = "wavenet", "Gated residual blocks of dilated causal convolutions.";
    Dense(dense::Config) = "dense", "No autoregression: an MLP of the context vector gives every position's distribution (a VAE's decoder).";
    Pixelcnn(pixelcnn::Config) = "pixelcnn", "Masked 2-D convolutions over an image in raster order.";
    GatedPixelcnn(gated_pixelcnn::Config) = "gated_pixelcnn", "Vertical and horizontal gated stacks, no blind spot, optional class conditioning.";
}

/// What a network family provides. Each family's `Config` holds its own settings only (layers, channels,
/// kernels); the shape of the data, the values, the input encoding, the likelihood and dropout are the
/// [`ModelConfig`]'s, passed in as `m`.
pub trait Family: std::fmt::Debug + Send + Sync {
    /// Checks the family's settings against the model (`m`), so that a config that passes can be built:
    /// every size within its limit (see [`crate::limits`]) first, then what would break causality or could
    /// not be built.
    fn validate(&self, m: &ModelConfig) -> Result<()>;
    /// An upper estimate of the parameter count (within a small factor of the exact one), given `out`, the
    /// outputs per position, from sizes `validate` has bounded.
    fn param_estimate(&self, m: &ModelConfig, out: u128) -> u128;
    /// For the activation-memory estimate: floats one layer computes per position, the layers whose
    /// activations a training step keeps, and the positions of padding a layer adds.
    fn activation_shape(&self, m: &ModelConfig) -> (usize, usize, usize);
    /// Builds the network, its weights drawn through `vb`.
    fn build(&self, m: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn CausalNet>>;
    /// The input encoding when the config gives none; `None` for a family whose values enter some other way
    /// (the RNN's embedding), which refuses an `input` setting.
    fn default_input(&self) -> Option<InputEncoding> {
        Some(InputEncoding::Raw)
    }
    /// Whether the family convolves images in two dimensions (and so needs `height` and `width`); the
    /// others read any shape as one sequence in the model's [`Ordering`].
    fn is_2d(&self) -> bool {
        false
    }
    /// The classes a class-conditional network is conditioned on.
    fn num_classes(&self) -> Option<usize> {
        None
    }
    /// Whether the network can be conditioned on a context vector per example (the model's `context`, the
    /// latent code of a latent-variable model's decoder).
    fn takes_context(&self) -> bool {
        false
    }
    /// Applies the architecture flags of the command line (`--hidden`, `--kernel`, `--dilations`,
    /// `--layers`), refusing those that do not apply to the family.
    fn apply(&mut self, flags: &ArchFlags) -> Result<()>;
}

/// Architecture settings given on the command line, each optional; a family maps them onto its own
/// settings ([`Family::apply`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArchFlags {
    pub hidden: Option<usize>,
    pub kernel: Option<usize>,
    pub dilations: Option<Vec<usize>>,
    pub layers: Option<usize>,
}

impl ArchFlags {
    /// An error for the flags given that `family` has no use for (`what`: which, and what to do instead).
    pub fn refuse(&self, family: &str, what: &[(&str, bool)]) -> Result<()> {
        match what.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(Error::Config(format!("{flag} does not apply to the {family} family"))),
            None => Ok(()),
        }
    }
}

/// The shape of one example: a sequence, or an image of `colors` channels (generated in the model's
/// [`Ordering`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Sequence { length: usize },
    Image { height: usize, width: usize, colors: usize },
}

impl Shape {
    /// Values per example, D.
    pub fn dim(&self) -> usize {
        match *self {
            Shape::Sequence { length } => length,
            Shape::Image { height, width, colors } => height * width * colors,
        }
    }
    /// The order its values are generated in.
    pub fn ordering(&self) -> Ordering {
        match *self {
            Shape::Sequence { length } => Ordering {
                height: 1,
                width: length,
                colors: 1,
            },
            Shape::Image { height, width, colors } => Ordering { height, width, colors },
        }
    }
}

/// The order an ARM generates the values of an example in: raster order over the pixels (rows top to
/// bottom, each left to right), and within a pixel its colours in turn (R before G before B), so position
/// d holds colour d % colors of pixel d / colors ("pixel-major"). A sequence is one row of one colour. The
/// data transforms ([`crate::data::transform::to_pixel_major`]), the colour masks of the 2-D families and
/// their steppers all read it from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ordering {
    pub height: usize,
    pub width: usize,
    pub colors: usize,
}

impl Ordering {
    /// Values per example.
    pub fn len(&self) -> usize {
        self.height * self.width * self.colors
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The position of colour `colour` of the pixel at (`row`, `col`).
    pub fn position(&self, row: usize, col: usize, colour: usize) -> usize {
        (row * self.width + col) * self.colors + colour
    }
    /// (pixel index in raster order, colour) of position `d`.
    pub fn pixel_and_colour(&self, d: usize) -> (usize, usize) {
        (d / self.colors, d % self.colors)
    }
    /// (row, column, colour) of position `d`.
    pub fn coords(&self, d: usize) -> (usize, usize, usize) {
        let (p, c) = self.pixel_and_colour(d);
        (p / self.width, p % self.width, c)
    }
    /// The position in this order of the value at `index` of a channel-major (`[C, H, W]`, the layout of
    /// image files) example.
    pub fn from_channel_major(&self, index: usize) -> usize {
        let plane = self.height * self.width;
        let (c, p) = (index / plane, index % plane);
        p * self.colors + c
    }
}

/// The per-position distribution of a model, over its `num_values` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Distribution {
    /// A softmax over the K values.
    Categorical,
    /// PixelCNN++'s discretized logistic mixture of `n_mix` components over K bins; for colour images,
    /// `colours` says how a pixel's colours are tied together (see [`image_head`]).
    LogisticMixture { n_mix: usize, colours: ColourMixture },
}

/// A model: the shape of its data and the values they take, how values enter the network, the network
/// (a family and its settings), the per-position distribution, and dropout; the ordering follows from the
/// shape ([`Shape::ordering`]). Written in a config file as one flat `[model]` table:
///
/// ```toml
/// [model]
/// kind = "wavenet"          # the network family (see FAMILIES) and its settings:
/// residual_channels = 64
/// skip_channels = 64
/// kernel = 2
/// dilations = [1, 2, 4, 8, 16, 32]
/// num_values = 17           # values 0..16
/// length = 64               # or: height = 8, width = 8 (colors = 1)
/// input = "one_hot"         # the family's default when left out
/// n_mix = 5                 # a discretized logistic mixture; left out: the categorical
/// dropout = 0.1
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub network: Network,
    pub shape: Shape,
    pub num_values: usize,
    pub input: InputEncoding,
    pub distribution: Distribution,
    pub dropout: f64,
    /// Numbers per example of a context vector the network is conditioned on (0: none) — set by a
    /// latent-variable model to its number of latents, for its decoder.
    pub context: usize,
}

/// The flat table of a config file (see [`ModelConfig`]).
#[derive(Serialize, Deserialize)]
#[serde(rename = "ModelConfig")]
struct Flat {
    #[serde(flatten)]
    network: Network,
    num_values: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    length: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    height: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    width: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    colors: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input: Option<InputEncoding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n_mix: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    colour_mixture: Option<ColourMixture>,
    #[serde(default)]
    dropout: f64,
    #[serde(default, skip_serializing_if = "is_default")]
    context: usize,
}

impl Flat {
    fn resolve(self) -> std::result::Result<ModelConfig, String> {
        let family = self.network.family();
        let shape = match (self.length, self.height, self.width) {
            (Some(length), None, None) if self.colors.is_none() => Shape::Sequence { length },
            (None, Some(height), Some(width)) => Shape::Image {
                height,
                width,
                colors: self.colors.unwrap_or(1),
            },
            (None, None, None) => return Err("give the data's shape: length, or height and width".into()),
            _ => {
                return Err(
                    "give either length (a sequence) or height and width (an image, with colors), not a mix".into(),
                )
            }
        };
        let input = match (family.default_input(), self.input) {
            (Some(_), Some(input)) => input,
            (Some(default), None) => default,
            (None, None) => InputEncoding::Raw,
            (None, Some(_)) => {
                return Err("this family takes no `input` setting: its values enter through a learned embedding".into())
            }
        };
        let distribution = match (self.n_mix, self.colour_mixture) {
            (Some(n_mix), colours) => Distribution::LogisticMixture {
                n_mix,
                colours: colours.unwrap_or_default(),
            },
            (None, None) => Distribution::Categorical,
            (None, Some(_)) => return Err("colour_mixture needs a logistic mixture (n_mix)".into()),
        };
        Ok(ModelConfig {
            network: self.network,
            shape,
            num_values: self.num_values,
            input,
            distribution,
            dropout: self.dropout,
            context: self.context,
        })
    }
}

impl<'de> Deserialize<'de> for ModelConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        // Through a table first: the family's settings are read from a buffered copy (serde's `flatten`),
        // whose errors name neither the setting nor its place; the table says which setting holds the value.
        let table = toml::Table::deserialize(d)?;
        let flat = Flat::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
            let e = e.message().trim_end().to_string();
            match (e.contains("unknown field"), holding(&table, &e)) {
                // The family's own settings are listed; the model's are valid too.
                (true, _) => serde::de::Error::custom(format!(
                    "{e} — or one of the model's own: num_values, length, height, width, colors, input, n_mix, \
                     colour_mixture, dropout, context"
                )),
                (false, Some(key)) => serde::de::Error::custom(format!("`{key}`: {e}")),
                (false, None) => serde::de::Error::custom(e),
            }
        })?;
        flat.resolve().map_err(serde::de::Error::custom)
    }
}

/// The one setting of `table` whose value serde's error `message` shows ("invalid type: string \"abc\",
/// expected …"), if exactly one does.
fn holding<'a>(table: &'a toml::Table, message: &str) -> Option<&'a str> {
    let shown = |v: &toml::Value| match v {
        toml::Value::String(s) => format!("string {s:?}"),
        toml::Value::Integer(i) => format!("integer `{i}`"),
        toml::Value::Float(f) => match f.to_string() {
            s if s.contains('.') || !f.is_finite() => format!("floating point `{s}`"),
            s => format!("floating point `{s}.0`"),
        },
        toml::Value::Boolean(b) => format!("boolean `{b}`"),
        // Not "sequence" alone: "expected a sequence" is in the message when an array was not given.
        toml::Value::Array(_) => "invalid type: sequence".into(),
        toml::Value::Table(_) => "invalid type: map".into(),
        toml::Value::Datetime(d) => d.to_string(),
    };
    let mut hits = table
        .iter()
        .filter(|(_, v)| message.contains(&shown(v)))
        .map(|(k, _)| k.as_str());
    match (hits.next(), hits.next()) {
        (Some(key), None) => Some(key),
        _ => None,
    }
}

impl Serialize for ModelConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let (length, height, width, colors) = match self.shape {
            Shape::Sequence { length } => (Some(length), None, None, None),
            Shape::Image { height, width, colors } => (None, Some(height), Some(width), Some(colors)),
        };
        let (n_mix, colour_mixture) = match self.distribution {
            Distribution::Categorical => (None, None),
            Distribution::LogisticMixture { n_mix, colours } => {
                (Some(n_mix), (colors.unwrap_or(1) > 1).then_some(colours))
            }
        };
        Flat {
            network: self.network.clone(),
            num_values: self.num_values,
            length,
            height,
            width,
            colors,
            input: self.network.family().default_input().map(|_| self.input),
            n_mix,
            colour_mixture,
            dropout: self.dropout,
            context: self.context,
        }
        .serialize(s)
    }
}

/// Kernels wider than the data (`extent` positions) only ever read padding there, and absurd sizes would
/// only exhaust memory: both are refused, as are dilations beyond 2^20. `data` names the data's size in the
/// message ("sequences of 64 positions", "8×8 pictures"); `field` is the config's name for the kernel.
pub(crate) fn check_kernel_size(field: &str, kernel: usize, dilation: usize, extent: usize, data: &str) -> Result<()> {
    if dilation > 1 << 20 {
        return Err(Error::Config(format!("model.dilations: {dilation} exceeds 2^20")));
    }
    if kernel > extent + 1 {
        return Err(Error::Config(format!(
            "model.{field} = {kernel} is too large for {data} (at most {})",
            extent + 1
        )));
    }
    Ok(())
}

/// [`check_kernel_size`] for a 1-D kernel at each of `dilations`, over sequences of `length`.
pub(crate) fn check_kernel_size_1d(kernel: usize, dilations: &[usize], length: usize) -> Result<()> {
    let data = format!("sequences of {length} positions");
    dilations
        .iter()
        .try_for_each(|&d| check_kernel_size("kernel", kernel, d, length, &data))
}

/// [`check_kernel_size`] for a 2-D kernel over `m`'s pictures: it spans both sides of its centre, so up to
/// twice the larger side (and at least 8) is allowed.
pub(crate) fn check_kernel_size_2d(field: &str, kernel: usize, m: &ModelConfig) -> Result<()> {
    let extent = (2 * m.height().max(m.width())).max(8);
    check_kernel_size(
        field,
        kernel,
        1,
        extent,
        &format!("{}×{} pictures", m.height(), m.width()),
    )
}

/// For `skip_serializing_if`: settings left at their default stay out of a written config.
pub fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// `model.{what} = v` within `limit`.
pub(crate) fn at_most(what: &str, v: usize, limit: usize) -> Result<()> {
    limits::check(format!("model.{what}"), limits::wide(v), limits::wide(limit))
}

/// A dilation beyond the sequence only ever reads padding, and pads every layer by (kernel − 1) × it.
pub(crate) fn check_dilations(d: &[usize], length: usize) -> Result<()> {
    at_most("dilations (layers)", d.len(), limits::MAX_LAYERS)?;
    let limit = length.max(limits::MAX_LAYERS);
    d.iter()
        .try_for_each(|&d| at_most("dilations entry (at most the length, or 1024)", d, limit))
}

impl ModelConfig {
    /// A model of `network` over sequences of `length` values in 0..`num_values`, with the family's default
    /// input encoding, the categorical distribution and no dropout.
    pub fn sequence(network: Network, num_values: usize, length: usize) -> Self {
        Self::with_shape(network, num_values, Shape::Sequence { length })
    }

    /// A model of `network` over `height × width` images of `colors` channels, values in 0..`num_values`,
    /// with the family's default input encoding, the categorical distribution and no dropout.
    pub fn image(network: Network, num_values: usize, height: usize, width: usize, colors: usize) -> Self {
        Self::with_shape(network, num_values, Shape::Image { height, width, colors })
    }

    fn with_shape(network: Network, num_values: usize, shape: Shape) -> Self {
        let input = network.family().default_input().unwrap_or_default();
        Self {
            network,
            shape,
            num_values,
            input,
            distribution: Distribution::Categorical,
            dropout: 0.0,
            context: 0,
        }
    }

    /// The same model with a discretized logistic mixture of `n_mix` components (colour images: PixelCNN++'s
    /// pixel mixture).
    pub fn with_mixture(mut self, n_mix: usize) -> Self {
        self.distribution = Distribution::LogisticMixture {
            n_mix,
            colours: ColourMixture::default(),
        };
        self
    }

    /// The same model with values entering the network as `input`.
    pub fn with_input(mut self, input: InputEncoding) -> Self {
        self.input = input;
        self
    }

    /// The same model with dropout `p` in training.
    pub fn with_dropout(mut self, p: f64) -> Self {
        self.dropout = p;
        self
    }

    /// The same model with a colour image's mixture tied by `colours` (a model with a mixture only).
    pub fn with_colour_mixture(mut self, colours: ColourMixture) -> Self {
        if let Distribution::LogisticMixture { n_mix, .. } = self.distribution {
            self.distribution = Distribution::LogisticMixture { n_mix, colours };
        }
        self
    }

    /// The network family's interface.
    pub fn family(&self) -> &dyn Family {
        self.network.family()
    }

    /// Rejects settings that cannot be built or that would break causality: every size within its limit
    /// (see [`crate::limits`]) and the model's parameter count, estimated before anything is allocated, within
    /// [`limits::MAX_PARAMS`]. A config that passes can be built.
    pub fn validate(&self) -> Result<()> {
        use limits::*;
        at_most("num_values", self.num_values, MAX_NUM_VALUES)?;
        match self.shape {
            Shape::Sequence { length } => at_most("length", length, MAX_DIM)?,
            Shape::Image { height, width, colors } => {
                at_most("height", height, MAX_SIDE)?;
                at_most("width", width, MAX_SIDE)?;
                at_most("colors", colors, 4)?;
                at_most("height × width × colors", height * width * colors, MAX_DIM)?;
            }
        }
        if let Distribution::LogisticMixture { n_mix, .. } = self.distribution {
            at_most("n_mix", n_mix, MAX_COMPONENTS)?;
        }
        let bad = |m: String| Err(Error::Config(m));
        if self.num_values < 2 {
            return bad(format!(
                "num_values = {}: a distribution needs at least 2 values",
                self.num_values
            ));
        }
        if self.dim() == 0 || self.ordering().colors == 0 {
            return bad("the data's shape must be positive: length, or height, width and colors ≥ 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout = {} must be in [0, 1)", self.dropout));
        }
        let family = self.family();
        if let Distribution::LogisticMixture { n_mix, colours } = self.distribution {
            if n_mix == 0 {
                return bad("n_mix must be at least 1".into());
            }
            let colors = self.ordering().colors;
            if colors > 1 && colours == ColourMixture::Pixel && (colors != 3 || !family.is_2d()) {
                return bad(format!(
                    "colour_mixture = \"pixel\" is PixelCNN++'s R, G, B mixture, built into the image families' \
                     head: it needs colors = 3 and a 2-D family (this is {colors} colours and {}); use \
                     colour_mixture = \"per_colour\"",
                    self.kind()
                ));
            }
        }
        at_most("context", self.context, limits::MAX_WIDTH)?;
        if self.context > 0 && !family.takes_context() {
            return bad(format!(
                "{} takes no context vector (context = {}): decoders of latent-variable models are dense or \
                 gated_pixelcnn",
                self.kind(),
                self.context
            ));
        }
        if family.is_2d() && matches!(self.shape, Shape::Sequence { .. }) {
            return bad(format!(
                "{} convolves images: give height and width (and colors) instead of length",
                self.kind()
            ));
        }
        family.validate(self)?;
        limits::check(
            "model parameters (estimated)",
            self.param_estimate(),
            limits::MAX_PARAMS,
        )
    }

    /// The family's name, as `kind` in a config file.
    pub fn kind(&self) -> &'static str {
        self.network.kind()
    }

    /// An upper estimate of the parameter count (within a small factor of the exact one, which only the built
    /// model knows), from sizes already checked by `validate`.
    pub fn param_estimate(&self) -> u128 {
        // Outputs per position, whatever the likelihood (a pixel mixture has 10 per component).
        let out = match self.likelihood() {
            Likelihood::Categorical { num_values } => limits::wide(num_values),
            l @ Likelihood::LogisticMixture { n_mix, .. } => {
                limits::wide(l.params_per_dim()) + 10 * limits::wide(n_mix)
            }
        };
        2 * self.family().param_estimate(self, out)
    }

    /// An estimate of the memory a training step on `batch` examples needs for activations and their
    /// gradients, in bytes: every layer's tensors per position, its input and output, kept, differentiated
    /// and copied once (3 × f32).
    pub fn activation_bytes(&self, batch: usize) -> u128 {
        use limits::wide;
        let (width, depth, pad) = self.family().activation_shape(self);
        let per_position =
            wide(width) * wide(depth) + wide(self.likelihood().params_per_dim()) * 4 + wide(self.num_values) * 2;
        wide(batch) * (wide(self.dim()) + wide(pad)) * per_position * 4 * 3
    }

    pub fn num_values(&self) -> usize {
        self.num_values
    }
    /// D, values per example.
    pub fn dim(&self) -> usize {
        self.shape.dim()
    }
    /// The order the values of an example are generated in.
    pub fn ordering(&self) -> Ordering {
        self.shape.ordering()
    }
    /// Rows of an image (1 for a sequence).
    pub fn height(&self) -> usize {
        self.ordering().height
    }
    /// Columns of an image (the length of a sequence).
    pub fn width(&self) -> usize {
        self.ordering().width
    }
    /// Colours per pixel (1 for a sequence).
    pub fn colors(&self) -> usize {
        self.ordering().colors
    }
    /// The colours the network's channels are split into by colour masks (1: none — gray images, sequences
    /// and the pixel mixture, whose network sees only whole pixels before the current one).
    pub fn network_colours(&self) -> usize {
        image_head::network_colours(self.colors(), self.likelihood(), self.colour_mixture())
    }
    /// (colours, height, width) of the images a model of images draws; `None` for sequences.
    pub fn image_shape(&self) -> Option<(usize, usize, usize)> {
        match self.shape {
            Shape::Image { height, width, colors } => Some((colors, height, width)),
            Shape::Sequence { .. } => None,
        }
    }
    pub fn likelihood(&self) -> Likelihood {
        match self.distribution {
            Distribution::Categorical => Likelihood::Categorical {
                num_values: self.num_values,
            },
            Distribution::LogisticMixture { n_mix, .. } => Likelihood::LogisticMixture {
                num_values: self.num_values,
                n_mix,
            },
        }
    }
    /// How a colour image's mixture ties its colours together (the default for the categorical).
    pub fn colour_mixture(&self) -> ColourMixture {
        match self.distribution {
            Distribution::LogisticMixture { colours, .. } => colours,
            Distribution::Categorical => ColourMixture::default(),
        }
    }
    /// Network outputs per position.
    pub fn outputs_per_position(&self) -> usize {
        self.likelihood().params_per_dim()
    }
    /// The classes a class-conditional model is conditioned on; `None` for the others.
    pub fn num_classes(&self) -> Option<usize> {
        self.family().num_classes()
    }
    /// The per-position distribution, in words (`armory info`).
    pub fn distribution(&self) -> String {
        let colors = self.ordering().colors;
        match self.likelihood() {
            Likelihood::Categorical { num_values } => format!("categorical (softmax) over {num_values} values"),
            l @ Likelihood::LogisticMixture { num_values, n_mix } => {
                if self.family().is_2d() && image_head::is_pixel_mixture(colors, l, self.colour_mixture()) {
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
    /// use armory::models::{causal_conv, Arm, ModelConfig, Network};
    /// use candle_core::{DType, Device};
    ///
    /// // The seed ARM's network on 8×8 digits (17 values), with 8 channels instead of 256.
    /// let cfg = ModelConfig::sequence(Network::CausalConv(causal_conv::Config { hidden: 8, ..Default::default() }), 17, 64);
    /// let arm = Arm::new(&cfg, 0, DType::F32, &Device::Cpu)?;
    /// assert_eq!((arm.dim(), arm.num_values()), (64, 17));
    /// assert_eq!(arm.receptive_field(), 25); // 4 layers of kernel 7: 1 + 4·6 positions
    /// # Ok::<(), armory::Error>(())
    /// ```
    pub fn new(config: &ModelConfig, seed: u64, dtype: DType, device: &Device) -> Result<Self> {
        let params = ParamStore::new(seed);
        Self::in_store(config, &params, params.var_builder(dtype, device))
    }

    /// The model of `config` built inside another model's parameters (`params`, under `vb`'s prefix): a
    /// latent-variable model's decoder, trained and saved with the rest of it.
    pub fn in_store(config: &ModelConfig, params: &ParamStore, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        let device = vb.device().clone();
        Ok(Self {
            config: config.clone(),
            net: config.family().build(config, vb)?,
            likelihood: config.likelihood(),
            params: params.clone(),
            device,
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
        self.stepper_context(batch, labels, None, arithmetic)
    }
    /// [`Arm::stepper_with`] for a model conditioned on a context vector (`context` `[B][E]` flattened; `None`
    /// for the others).
    pub fn stepper_context(
        &self,
        batch: usize,
        labels: Option<&[u32]>,
        context: Option<&[f32]>,
        arithmetic: Arithmetic,
    ) -> Result<Option<Box<dyn Stepper + '_>>> {
        let labels_t = labels
            .map(|l| Tensor::from_slice(l, l.len(), &self.device))
            .transpose()?;
        check_labels(self.num_classes(), labels_t.as_ref(), batch)?;
        let context_t = context
            .map(|c| Tensor::from_slice(c, (batch, c.len() / batch.max(1)), &self.device))
            .transpose()?;
        check_context(self.config.context, context_t.as_ref(), batch)?;
        self.net.stepper(batch, labels, context, arithmetic)
    }
    /// Classes of a class-conditional model.
    pub fn num_classes(&self) -> Option<usize> {
        self.net.num_classes()
    }
    /// Numbers per example of the context vector the model is conditioned on (0: none).
    pub fn context_size(&self) -> usize {
        self.config.context
    }

    /// Checks that x is `[B, D]` with values in 0..K.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let (_, d) = x.dims2()?;
        if d != self.dim() {
            return Err(Error::Invalid(format!(
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

    /// The network's θ; an evaluation pass reuses kernels packed from the same weights by an earlier one
    /// ([`crate::nn::kernels::shifted_conv::evaluating`]).
    fn run_net(&self, x: &Tensor, labels: Option<&Tensor>, context: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        match mode {
            Mode::Eval => crate::nn::kernels::shifted_conv::evaluating(|| self.net.forward(x, labels, context, mode)),
            Mode::Train { .. } => self.net.forward(x, labels, context, mode),
        }
    }

    /// θ for every position: x `[B, D]` (u32) → `[B, D, P]`.
    pub fn forward(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.run_net(x, None, None, mode)
    }

    /// θ given class labels `[B]` (class-conditional models; `None` otherwise).
    pub fn forward_labelled(&self, x: &Tensor, labels: Option<&Tensor>, mode: Mode) -> Result<Tensor> {
        self.run_net(x, labels, None, mode)
    }

    /// θ given labels (class-conditional models) and a context `[B, E]` (models conditioned on one).
    pub fn forward_context(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        context: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.run_net(x, labels, context, mode) // each network checks the context it is given
    }

    /// log p(x | labels, context) in nats, `[B]`, in `mode` (differentiable: a latent-variable model trains
    /// through it, dropout included in [`Mode::Train`]).
    pub fn log_prob_context(
        &self,
        x: &Tensor,
        labels: Option<&Tensor>,
        context: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        self.likelihood
            .log_prob(&self.forward_context(x, labels, context, mode)?, x)
    }

    /// log p(x) in nats: x `[B, D]` (u32) → `[B]`.
    ///
    /// ```
    /// use armory::models::{causal_conv, Arm, ModelConfig, Network};
    /// use candle_core::{DType, Device, Tensor};
    ///
    /// let cfg = ModelConfig::sequence(Network::CausalConv(causal_conv::Config { hidden: 8, ..Default::default() }), 17, 64);
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
        self.likelihood.log_prob(&self.run_net(x, labels, None, Mode::Eval)?, x)
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
            .log_prob(&self.run_net(x, labels, None, mode)?, x)?
            .neg()?;
        Ok(match reduction {
            Reduction::Mean => nll.mean_all()?,
            Reduction::Sum => nll.sum_all()?,
        })
    }
}

#[cfg(test)]
mod ordering_tests {
    use super::Ordering;

    /// Positions, coordinates and the channel-major file layout agree: every position is hit once, colour
    /// fastest, then columns, then rows.
    #[test]
    fn ordering_is_raster_and_pixel_major() {
        let o = Ordering {
            height: 2,
            width: 3,
            colors: 3,
        };
        let mut seen = vec![false; o.len()];
        for row in 0..2 {
            for col in 0..3 {
                for colour in 0..3 {
                    let d = o.position(row, col, colour);
                    assert_eq!(o.coords(d), (row, col, colour));
                    assert_eq!(o.pixel_and_colour(d), (row * 3 + col, colour));
                    assert_eq!(o.from_channel_major(colour * 6 + row * 3 + col), d);
                    seen[d] = true;
                }
            }
        }
        assert!(seen.iter().all(|&s| s));
        assert_eq!(o.position(0, 1, 0), 3);
        let seq = Ordering {
            height: 1,
            width: 5,
            colors: 1,
        };
        assert_eq!((seq.coords(4), seq.from_channel_major(4)), ((0, 4, 0), 4));
    }
}
