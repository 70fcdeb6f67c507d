//! A run's configuration: data, model and training recipe, read from TOML (`configs/*.toml`).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::data::{self, transform, Dataset, Split, Splits};
use crate::error::{Error, Result};
use crate::latent::VaeConfig;
use crate::limits;
use crate::models::ModelConfig;
use crate::train::TrainConfig;

/// The seed ARM's config, embedded so `armory train` runs with no files at hand.
pub const SEED_CONFIG: &str = include_str!("../configs/seed-arm.toml");

/// Every config in `configs/`, embedded, by name (`armory train --model NAME`).
pub const NAMED: &[(&str, &str)] = &[
    ("seed-arm", SEED_CONFIG),
    ("dilated-conv", include_str!("../configs/dilated-conv.toml")),
    ("mlp", include_str!("../configs/mlp.toml")),
    ("lstm", include_str!("../configs/lstm.toml")),
    ("gru", include_str!("../configs/gru.toml")),
    ("wavenet", include_str!("../configs/wavenet.toml")),
    ("pixelcnn", include_str!("../configs/pixelcnn.toml")),
    ("gated-pixelcnn", include_str!("../configs/gated-pixelcnn.toml")),
    (
        "gated-pixelcnn-cond",
        include_str!("../configs/gated-pixelcnn-cond.toml"),
    ),
    (
        "gated-pixelcnn-mixture",
        include_str!("../configs/gated-pixelcnn-mixture.toml"),
    ),
    ("vae", include_str!("../configs/vae.toml")),
    ("vae-arm-prior", include_str!("../configs/vae-arm-prior.toml")),
    ("pixelvae", include_str!("../configs/pixelvae.toml")),
    ("pixelvae-arm-prior", include_str!("../configs/pixelvae-arm-prior.toml")),
    ("binarized-mnist", include_str!("../configs/binarized-mnist.toml")),
    ("mnist", include_str!("../configs/mnist.toml")),
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `digits` (embedded), `mnist:DIR`, `fashion-mnist:DIR`, `binarized-mnist:DIR`, `cifar10:DIR`,
    /// `png:DIR`, `npy:FILE`, or a path to a file in the digits CSV format (see `data::load`).
    pub dataset: String,
    /// Training examples held out for validation, for data sets that come with their own test set.
    #[serde(default = "default_validation")]
    pub validation: usize,
    /// Quantize the values to this many levels after loading (e.g. 256 → 16 keeps the high 4 bits).
    #[serde(default)]
    pub levels: Option<usize>,
    /// Binarize after loading: `threshold` (the upper half of the values → 1) or `stochastic` (1 with
    /// probability v / (K − 1), drawn once from `binarize_seed`).
    #[serde(default)]
    pub binarize: Option<Binarize>,
    #[serde(default)]
    pub binarize_seed: u64,
}

/// How to binarize a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Binarize {
    Threshold,
    Stochastic,
}

impl DataConfig {
    /// Loads the train, validation and test sets and applies the quantization or binarization asked for
    /// (stochastic binarization draws each split with its own stream of `binarize_seed`). Colour pictures
    /// come out pixel-major, `[H, W, C]`: the order an ARM generates them in (R, G, B of each pixel in turn).
    pub fn load(&self) -> Result<Splits> {
        if self.levels.is_some() && self.binarize.is_some() {
            return Err(Error::Config("[data]: give either levels or binarize, not both".into()));
        }
        let splits = data::load_splits(&self.dataset, self.validation)?;
        let spec = self.dataset.as_str();
        let prep = |ds: Dataset, stream: u64| -> Result<Dataset> {
            let ds = transform::to_pixel_major(ds);
            match (self.levels, self.binarize) {
                (Some(levels), _) => transform::quantize(&ds, levels),
                (_, Some(Binarize::Threshold)) => {
                    Ok(transform::binarize_threshold(&ds, ds.num_values.div_ceil(2) as u32))
                }
                (_, Some(Binarize::Stochastic)) => {
                    transform::binarize_stochastic(&ds, self.binarize_seed.wrapping_mul(3).wrapping_add(stream))
                }
                (None, None) => Ok(ds),
            }
        };
        let prep = |ds, stream| prep(ds, stream).map_err(|e| e.about_data(spec));
        Ok(Splits {
            train: prep(splits.train, 0)?,
            val: prep(splits.val, 1)?,
            test: prep(splits.test, 2)?,
        })
    }
}

/// Whether data set `spec` fits `model`: D dimensions, values within its K, and for a class-conditional model a
/// label in 0..num_classes for every example. Checked before a run directory is written, so a mismatch is an
/// error naming the data, not a failure in the middle of the first epoch.
pub fn check_fits(model: &ModelConfig, splits: &Splits, spec: &str) -> Result<()> {
    for split in [Split::Train, Split::Val, Split::Test] {
        check_split_fits(model, splits, split, spec)?;
    }
    Ok(())
}

/// Whether the `split` of data set `spec` fits `model`, as [`check_fits`] asks of every split; for a command
/// that reads only one (`eval`, `encode`), the error names that one.
pub fn check_split_fits(model: &ModelConfig, splits: &Splits, split: Split, spec: &str) -> Result<()> {
    let (part, ds) = (split, splits.get(split));
    if ds.dim != model.dim() || ds.num_values > model.num_values() {
        return Err(Error::data(
            spec,
            format!(
                "the {part} set has {} dimensions with {} values, the model expects {} and {}",
                ds.dim,
                ds.num_values,
                model.dim(),
                model.num_values()
            ),
        ));
    }
    // The same number of values in another shape would train on the wrong neighbours (a row of the
    // model's picture made of two of the data's).
    if let Some(shape) = model.image_shape().filter(|&s| s != ds.image_shape) {
        let words = data::pictures_in_words;
        let (c, h, w) = ds.image_shape;
        return Err(Error::data(
            spec,
            format!(
                "the {part} set holds {}, the model expects {}: set height = {h}, width = {w}, colors = {c}",
                words(ds.image_shape),
                words(shape)
            ),
        ));
    }
    if let Some(n) = model.num_classes() {
        let labels = ds.labels.as_ref().ok_or_else(|| {
            Error::data(
                spec,
                format!("the {part} set has no labels, but the model is class-conditional ({n} classes)"),
            )
        })?;
        if let Some(l) = labels.iter().find(|&&l| l as usize >= n) {
            return Err(Error::data(
                spec,
                format!("the {part} set has label {l}, outside the model's classes 0..{}", n - 1),
            ));
        }
    }
    Ok(())
}

/// The `--model` help of the command line: every embedded config by name, from [`NAMED`].
pub fn named_help() -> String {
    let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
    format!(
        "One of the configs shipped in configs/ (embedded): {} (binarized-mnist and mnist need --data mnist:DIR)",
        names.join(", ")
    )
}

/// Training examples held out for validation by default, for data sets with their own test set.
pub const DEFAULT_VALIDATION: usize = 5000;

fn default_validation() -> usize {
    DEFAULT_VALIDATION
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    pub data: DataConfig,
    /// The ARM — or, with `[latent]`, the decoder p(x|z) of a VAE, conditioned on z.
    pub model: ModelConfig,
    pub train: TrainConfig,
    /// A latent-variable model (a VAE) whose decoder is `[model]`: its encoder, prior and schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latent: Option<VaeConfig>,
}

/// serde's messages name the Rust type a setting is read into ("expected usize"): said in words instead.
fn plain_types(message: &str) -> String {
    const WORDS: [(&str, &str); 10] = [
        ("usize", "a whole number, 0 or more"),
        ("u64", "a whole number, 0 or more"),
        ("u32", "a whole number, 0 or more"),
        ("u16", "a whole number, 0 or more"),
        ("u8", "a whole number, 0 or more"),
        ("i64", "a whole number"),
        ("i32", "a whole number"),
        ("f64", "a number"),
        ("f32", "a number"),
        ("bool", "true or false"),
    ];
    let mut out = message.to_string();
    for (rust, words) in WORDS {
        let from = format!("expected {rust}");
        let mut at = 0;
        while let Some(i) = out[at..].find(&from).map(|i| i + at) {
            let end = i + from.len();
            if out[end..].starts_with(|c: char| c.is_alphanumeric() || c == '_') {
                at = end;
                continue;
            }
            out.replace_range(i..end, &format!("expected {words}"));
            at = i;
        }
    }
    out
}

impl RunConfig {
    pub fn seed() -> Self {
        Self::parse(SEED_CONFIG, Path::new("<embedded configs/seed-arm.toml>")).expect("the embedded config parses")
    }

    /// One of the embedded configs by name (see [`NAMED`]).
    ///
    /// ```
    /// use armory::config::RunConfig;
    ///
    /// let cfg = RunConfig::named("wavenet")?; // configs/wavenet.toml, embedded in the library
    /// assert_eq!((cfg.data.dataset.as_str(), cfg.model.dim()), ("digits", 64));
    /// assert!(RunConfig::named("wavnet").is_err()); // the error lists the names
    /// # Ok::<(), armory::Error>(())
    /// ```
    pub fn named(name: &str) -> Result<Self> {
        let (_, text) = NAMED.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            let names: Vec<&str> = NAMED.iter().map(|(n, _)| *n).collect();
            Error::Config(format!("no model named `{name}`; the models are {}", names.join(", ")))
        })?;
        Self::parse(text, Path::new(&format!("<embedded configs/{name}.toml>")))
    }

    /// Parses TOML text; `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text); // a byte-order mark some editors write
        let mut cfg: RunConfig = toml::from_str(text).map_err(|e| {
            // Where in the file, as an editor counts: line and column from 1.
            let at = e.span().map_or(String::new(), |span| {
                let before = &text[..span.start.min(text.len())];
                let line = before.matches('\n').count() + 1;
                let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                format!(" (line {line}, column {column})")
            });
            Error::Config(format!("{}{at}: {}", path.display(), plain_types(e.message())))
        })?;
        // A VAE's decoder is conditioned on its latents: the config need not say so twice.
        if let (Some(latent), 0) = (&cfg.latent, cfg.model.context) {
            cfg.model.context = latent.latents;
        }
        cfg.validate().map_err(|e| e.in_file(path))?;
        Ok(cfg)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        Self::parse(&read_text(path)?, path)
    }

    /// Checks the model (see [`ModelConfig::validate`]), the recipe, that a validation set will be left, and
    /// that a training batch's activations fit in [`limits::MAX_ACTIVATION_BYTES`] (estimated).
    pub fn validate(&self) -> Result<()> {
        // A VAE's [latent] first: its decoder takes `latents` as its context, and a wrong size should be named
        // as the setting written, not as the model's context.
        if let Some(latent) = &self.latent {
            latent.validate(self.model.dim(), self.model.num_values)?;
        }
        self.model.validate()?;
        self.train.validate()?;
        // The run directory keeps the config as TOML, whose integers are i64: a seed or count above that
        // (from a command-line flag) could not be written.
        for (name, n) in [
            ("train.seed", self.train.seed),
            ("data.binarize_seed", self.data.binarize_seed),
        ] {
            if i64::try_from(n).is_err() {
                return Err(Error::Config(format!(
                    "{name} = {n} is too large: the config cannot be written as TOML, whose integers go up to {}",
                    i64::MAX
                )));
            }
        }
        if let Err(e) = toml::to_string(self) {
            return Err(Error::Config(format!(
                "the config cannot be written as TOML ({e}): its integers go up to {}",
                i64::MAX
            )));
        }
        match &self.latent {
            Some(latent) => {
                if self.model.context != latent.latents {
                    return Err(Error::Config(format!(
                        "model.context = {} but the VAE has {} latents: the decoder reads all of them",
                        self.model.context, latent.latents
                    )));
                }
                if self.model.num_classes().is_some() {
                    return Err(Error::Config(
                        "a VAE's decoder is conditioned on z, not on class labels: drop num_classes".into(),
                    ));
                }
            }
            None if self.model.context > 0 => {
                return Err(Error::Config(format!(
                    "model.context = {}: a context comes from a latent-variable model; add a [latent] section",
                    self.model.context
                )))
            }
            None => {}
        }
        if self.data.validation == 0 {
            return Err(Error::Config(
                "data.validation (--validation) = 0 would leave no validation set: early stopping and the best \
                 checkpoint need at least 1 example"
                    .into(),
            ));
        }
        // A VAE trained on the k-sample bound decodes k codes of every example in the batch.
        let samples = self.latent.as_ref().map_or(1, |l| l.train_samples);
        limits::check(
            match samples {
                1 => format!(
                    "activation memory of a training batch of {} (bytes, estimated; lower train.batch_size)",
                    self.train.batch_size
                ),
                k => format!(
                    "activation memory of a training batch of {} × {k} importance samples (bytes, estimated; \
                     lower train.batch_size or latent.train_samples)",
                    self.train.batch_size
                ),
            },
            self.model
                .activation_bytes(self.train.batch_size.saturating_mul(samples)),
            limits::MAX_ACTIVATION_BYTES,
        )
    }

    /// What the weights of a run fit: FNV-1a 64 of `[model]` and `[latent]` in canonical form (keys sorted).
    pub fn model_fingerprint(&self) -> u64 {
        fingerprint(&serde_json::json!({ "model": self.model, "latent": self.latent }))
    }

    /// What a run's checkpoints are stamped with ([`crate::params::ParamStore::set_stamp`]): what the
    /// weights are — `[model]` and `[latent]` without the settings that only steer training (dropout, the
    /// VAE's warm-ups, free bits, training samples) — of this config as a run folder holds it (written, then
    /// read back), FNV-1a 64 in hex behind a version (`v1:`: a later version that describes models
    /// differently stamps another and ignores this one).
    pub fn checkpoint_stamp(&self) -> String {
        let back = Self::parse(&self.to_toml(), Path::new("config.toml"));
        let cfg = back.as_ref().unwrap_or(self);
        let mut model = cfg.model.clone();
        model.dropout = 0.0;
        let latent = cfg
            .latent
            .as_ref()
            .map(|l| serde_json::json!({ "latents": l.latents, "hidden": l.hidden, "prior": l.prior }));
        let weights = fingerprint(&serde_json::json!({ "model": model, "latent": latent }));
        format!("{}{weights:016x}", crate::params::STAMP_VERSION)
    }

    /// What resuming a run exactly needs: the same of the whole config, the data's path aside (data moved
    /// and named anew in the config are the same data).
    pub fn recipe_fingerprint(&self) -> u64 {
        let mut cfg = self.clone();
        cfg.data.dataset.clear();
        fingerprint(&serde_json::json!(cfg))
    }

    /// The comment line a run's `config.toml` starts with: the fingerprints of what the weights fit and of
    /// the recipe. Versioned: a fingerprint hashes this version's form of the config, so a later version
    /// that writes the config differently stamps with another version and ignores stamps it does not know.
    pub fn stamp_line(&self) -> String {
        format!(
            "{STAMP}{:016x}, recipe {:016x} (a [model] or [latent] edited later no longer fits the weights; \
             a [train] edited later no longer resumes exactly)\n",
            self.model_fingerprint(),
            self.recipe_fingerprint()
        )
    }

    /// A run's config file, refused if it carries a stamp ([`Self::stamp_line`]) and its `[model]` or
    /// `[latent]` is not what the stamp says (edited after training: the weights may still load where the
    /// shapes allow, and give wrong figures). A config without a stamp (another version's, or a plain one)
    /// is taken as it is.
    pub fn from_stamped_file(path: &Path) -> Result<Self> {
        Self::read_stamped(path, false)
    }

    /// For `--resume`: as [`Self::from_stamped_file`], and the recipe stamped, if any, must be the file's too.
    pub fn from_stamped_file_to_resume(path: &Path) -> Result<Self> {
        Self::read_stamped(path, true)
    }

    /// The config file at `path`, read once, checked against its stamp: the model always, the recipe too if
    /// `recipe`.
    fn read_stamped(path: &Path, recipe: bool) -> Result<Self> {
        let text = read_text(path)?;
        let cfg = Self::parse(&text, path)?;
        if let Some((model_stamp, recipe_stamp)) = stamp_in(&text, path)? {
            if model_stamp != cfg.model_fingerprint() {
                return Err(edited(
                    path,
                    "[model] or [latent]",
                    "its weights were trained with another",
                ));
            }
            if recipe && recipe_stamp != cfg.recipe_fingerprint() {
                return Err(edited(
                    path,
                    "[train] or [data]",
                    "the run was started with another, and --resume continues a run exactly",
                ));
            }
        }
        Ok(cfg)
    }

    /// A new run's model takes the values its data is quantized to (`levels`, or 2 when binarized): a model
    /// of more would put mass on values the data never has, and draw them. Runs of earlier versions that
    /// differ still load; only `train` asks this.
    pub fn check_quantized_values(&self) -> Result<()> {
        let left = match (self.data.levels, self.data.binarize) {
            (Some(l), _) => format!("levels = {l}"),
            (None, Some(_)) => "binarize".to_string(),
            (None, None) => return Ok(()),
        };
        let k = self.data.levels.unwrap_or(2);
        match self.model.num_values() {
            n if n == k => Ok(()),
            n => Err(Error::Config(format!(
                "[data] {left} leaves the data {k} values, but [model] num_values = {n}: set num_values = {k}"
            ))),
        }
    }

    /// The config as TOML; [`Self::validate`] has checked that it can be written.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a config serialises")
    }
}

/// The start of a run config's stamp line ([`RunConfig::stamp_line`]).
const STAMP: &str = "# armory v1: trained with model ";

/// A config file's text, read to the config limit.
fn read_text(path: &Path) -> Result<String> {
    let bytes = limits::read_file(path, limits::MAX_CONFIG_BYTES, "bytes of a config file")?;
    String::from_utf8(bytes).map_err(|_| Error::data(path, "not a text (UTF-8) file"))
}

/// The (model, recipe) fingerprints of the stamp among the comment lines the config text of `path` starts
/// with (a byte-order mark skipped); `None` without one. A line that starts as a stamp but does not read is an
/// error: a damaged stamp must not pass for none.
fn stamp_in(text: &str, path: &Path) -> Result<Option<(u64, u64)>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let leading = text
        .lines()
        .map(str::trim)
        .take_while(|l| l.is_empty() || l.starts_with('#'));
    let Some(rest) = leading.filter_map(|l| l.strip_prefix(STAMP)).next() else {
        return Ok(None);
    };
    let hex = |s: &str| s.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok());
    let recipe = rest.split_once(", recipe ").and_then(|(_, r)| hex(r));
    match hex(rest).zip(recipe) {
        Some(both) => Ok(Some(both)),
        None => Err(Error::Config(format!(
            "{}: its first lines hold a damaged stamp (`{STAMP}…`); restore it from a copy, or delete the line to \
             load the config unchecked",
            path.display()
        ))),
    }
}

fn edited(path: &Path, what: &str, why: &str) -> Error {
    Error::Config(format!(
        "{}: its {what} was changed after training ({why}); restore it, or train a new run",
        path.display()
    ))
}

/// FNV-1a 64 of `v` in canonical JSON (every object's keys sorted).
fn fingerprint(v: &serde_json::Value) -> u64 {
    let mut h = crate::codec::container::Fnv64::default();
    h.write(crate::codec::container::canonical(v.clone()).to_string().as_bytes());
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every shipped config read back from what a run writes has the fingerprints it was stamped with, and
    /// its checkpoints' stamp, so a run is never refused for a config or weights nobody edited.
    #[test]
    fn shipped_configs_keep_their_fingerprints_through_a_run_folder() {
        for (name, _) in NAMED {
            let cfg = RunConfig::named(name).unwrap();
            let written = cfg.stamp_line() + &cfg.to_toml();
            let back = RunConfig::parse(&written, Path::new(name)).unwrap();
            assert_eq!(back.model_fingerprint(), cfg.model_fingerprint(), "{name}");
            assert_eq!(back.recipe_fingerprint(), cfg.recipe_fingerprint(), "{name}");
            assert_eq!(back.checkpoint_stamp(), cfg.checkpoint_stamp(), "{name}");
            assert!(written.starts_with(STAMP), "{name}");
        }
    }

    /// A TOML syntax error says where: line and column, from 1.
    #[test]
    fn a_syntax_error_names_its_line_and_column() {
        let e = RunConfig::parse("[data]\ndataset = \"digits\" x\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("c.toml (line 2, column 20):"), "{e}");
    }

    #[test]
    fn the_seed_config_is_the_seed_network() {
        let cfg = RunConfig::seed();
        let crate::models::Network::CausalConv(m) = &cfg.model.network else {
            panic!("seed-arm is a causal conv")
        };
        assert_eq!(m, &crate::models::causal_conv::Config::default());
        assert_eq!((cfg.model.num_values, cfg.model.dim()), (17, 64));
        assert_eq!(RunConfig::parse(&cfg.to_toml(), Path::new("x")).unwrap(), cfg);
    }

    /// A seed above TOML's largest integer (a command-line flag can give one) is refused by `validate`,
    /// before a run directory would be made and its config.toml could not be written.
    #[test]
    fn a_number_toml_cannot_hold_is_refused() {
        let mut cfg = RunConfig::seed();
        cfg.train.seed = i64::MAX as u64 + 1;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("cannot be written as TOML"), "{e}");
        cfg.train.seed = i64::MAX as u64;
        cfg.validate().unwrap();
    }

    #[test]
    fn every_named_config_parses_and_round_trips() {
        for (name, _) in NAMED {
            let cfg = RunConfig::named(name).unwrap();
            assert_eq!(
                RunConfig::parse(&cfg.to_toml(), Path::new(name)).unwrap(),
                cfg,
                "{name}"
            );
        }
        assert!(RunConfig::named("nope").unwrap_err().to_string().contains("wavenet"));
    }

    /// The parameter estimate `validate` checks before anything is allocated bounds the built model's count
    /// from above, within a small factor, for every shipped config.
    #[test]
    fn the_parameter_estimate_bounds_the_built_model() {
        for (name, _) in NAMED {
            let cfg = RunConfig::named(name).unwrap();
            let arm =
                crate::models::Arm::new(&cfg.model, 0, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
            let (exact, est) = (arm.params().num_params() as u128, cfg.model.param_estimate());
            assert!(
                exact <= est && est <= 8 * exact,
                "{name}: {exact} parameters, estimated {est}"
            );
        }
    }

    #[test]
    fn a_type_b_first_layer_is_refused_with_the_reason() {
        let text = SEED_CONFIG.replace(
            "input = \"raw\"",
            "input = \"raw\"\nlayer_types = [\"B\", \"B\", \"B\", \"B\"]",
        );
        let e = RunConfig::parse(&text, Path::new("cfg.toml")).unwrap_err().to_string();
        assert!(
            e.contains("cfg.toml: ") && e.contains("first layer is type B") && e.contains("see x_d"),
            "{e}"
        );
        let huge = SEED_CONFIG.replace("hidden = 256", "hidden = 99999");
        let e = RunConfig::parse(&huge, Path::new("huge.toml")).unwrap_err().to_string();
        assert_eq!(e, "huge.toml: model.hidden = 99999 exceeds the limit of 16384");
        let typo = SEED_CONFIG.replace("hidden = 256", "hiden = 256");
        let e = RunConfig::parse(&typo, Path::new("t.toml")).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `hiden`") && e.contains("`hidden`") && e.contains("num_values"),
            "{e}"
        );
        let e = RunConfig::parse("[model]\nkind = \"nope\"", Path::new("cfg.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cfg.toml"), "{e}");
        // A value of the wrong type: the setting named (the family's own too), the type said in words.
        for (from, to, setting, words) in [
            (
                "hidden = 256",
                "hidden = \"abc\"",
                "`hidden`",
                "a whole number, 0 or more",
            ),
            ("hidden = 256", "hidden = -3", "`hidden`", "a whole number, 0 or more"),
            ("kernel = 7", "kernel = 3.5", "`kernel`", "a whole number, 0 or more"),
            (
                "num_values = 17",
                "num_values = true",
                "`num_values`",
                "a whole number, 0 or more",
            ),
            ("lr = 1e-3", "lr = \"fast\"", "", "expected a number"),
        ] {
            let bad = SEED_CONFIG.replace(from, to);
            assert_ne!(bad, SEED_CONFIG, "{from}");
            let e = RunConfig::parse(&bad, Path::new("t.toml")).unwrap_err().to_string();
            assert!(
                e.contains("t.toml") && e.contains(setting) && e.contains(words),
                "{to}: {e}"
            );
            assert!(!e.contains("usize") && !e.contains("f64"), "{to}: {e}");
        }
        assert_eq!(
            plain_types("expected u8, expected u8x, expected f32"),
            "expected a whole number, 0 or more, expected u8x, expected a number"
        );
    }

    /// Quantization and both binarizations apply to every split; stochastic binarization is fixed by its
    /// seed; asking for both kinds at once is refused.
    #[test]
    fn data_preparation_applies_to_every_split() {
        let base = RunConfig::seed().data; // digits, values 0..16
        let with = |levels, binarize, seed| DataConfig {
            levels,
            binarize,
            binarize_seed: seed,
            ..base.clone()
        };
        let plain = base.load().unwrap();
        let q = with(Some(4), None, 0).load().unwrap();
        for (a, b) in [(&plain.train, &q.train), (&plain.test, &q.test)] {
            assert_eq!(b.num_values, 4);
            assert!(a.values.iter().zip(&b.values).all(|(&v, &w)| w == v * 4 / 17));
        }
        let t = with(None, Some(Binarize::Threshold), 0).load().unwrap();
        assert_eq!(t.val.num_values, 2);
        assert!(plain
            .val
            .values
            .iter()
            .zip(&t.val.values)
            .all(|(&v, &w)| w == (v >= 9) as u32));
        let s1 = with(None, Some(Binarize::Stochastic), 1).load().unwrap();
        assert_eq!(
            s1.train.values,
            with(None, Some(Binarize::Stochastic), 1).load().unwrap().train.values
        );
        assert_ne!(
            s1.train.values,
            with(None, Some(Binarize::Stochastic), 2).load().unwrap().train.values
        );
        assert!(s1.test.values.iter().all(|&v| v < 2));
        let e = with(Some(4), Some(Binarize::Threshold), 0)
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("either levels or binarize"), "{e}");
    }
}
