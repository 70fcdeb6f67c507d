//! The library's enums as command-line choices. The library knows nothing of clap: each list here gives the
//! names a flag accepts (those of the config files), their help, and the value each stands for; [`parser`]
//! turns a list into a clap value parser, so `--help` lists the names and a wrong one is refused with them.

use armory::config::Binarize;
use armory::data::Split;
use armory::sample::Method;
use armory::train::OptimizerKind;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

/// A name a flag accepts, its help ("" for none) and the value it stands for.
pub type Choice<T> = (&'static str, &'static str, T);

pub const SPLITS: &[Choice<Split>] = &[
    ("train", "", Split::Train),
    ("val", "", Split::Val),
    ("test", "", Split::Test),
];

pub const METHODS: &[Choice<Method>] = &[
    ("naive", "D full forward passes", Method::Naive),
    (
        "cached",
        "One column of computation per position (models with a stepper)",
        Method::Cached,
    ),
    (
        "predictive",
        "Fixed-point iteration with fixed noise; reports its ARM calls",
        Method::Predictive,
    ),
];

pub const OPTIMIZERS: &[Choice<OptimizerKind>] = &[
    ("adam", "", OptimizerKind::Adam),
    (
        "adamax",
        "Adam with the infinity norm; the seed chapter's optimiser",
        OptimizerKind::Adamax,
    ),
];

pub const BINARIZE: &[Choice<Binarize>] = &[
    ("threshold", "", Binarize::Threshold),
    ("stochastic", "", Binarize::Stochastic),
];

/// A clap value parser that accepts exactly the names in `choices` and gives their values.
pub fn parser<T: Clone + Send + Sync + 'static>(choices: &'static [Choice<T>]) -> impl TypedValueParser<Value = T> {
    let names = choices.iter().map(|&(name, help, _)| match help {
        "" => PossibleValue::new(name),
        help => PossibleValue::new(name).help(help),
    });
    PossibleValuesParser::new(names).map(move |given: String| {
        let (_, _, value) = choices
            .iter()
            .find(|(name, _, _)| *name == given)
            .expect("clap accepts only the listed names");
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each list names every variant once, by the name the config files use for it (methods: their Display).
    #[test]
    fn every_variant_is_listed_by_its_config_name() {
        fn check<T: PartialEq + std::fmt::Debug>(choices: &[Choice<T>], name_of: impl Fn(&T) -> String, n: usize) {
            assert_eq!(choices.len(), n, "{choices:?}");
            for (i, (name, _, value)) in choices.iter().enumerate() {
                assert_eq!(&name_of(value), name);
                assert!(
                    choices[..i].iter().all(|(_, _, v)| v != value),
                    "{value:?} listed twice"
                );
            }
        }
        // The matches have no wildcard: a new variant fails to compile here until it is counted and listed.
        let splits = |s: Split| match s {
            Split::Train | Split::Val | Split::Test => 3,
        };
        let methods = |m: Method| match m {
            Method::Naive | Method::Cached | Method::Predictive => 3,
        };
        let optimizers = |o: OptimizerKind| match o {
            OptimizerKind::Adam | OptimizerKind::Adamax => 2,
        };
        let binarize = |b: Binarize| match b {
            Binarize::Threshold | Binarize::Stochastic => 2,
        };
        let json = |v: String| v.trim_matches('"').to_string();
        check(
            SPLITS,
            |v| json(serde_json::to_string(v).unwrap()),
            splits(Split::Train),
        );
        check(METHODS, |v| v.to_string(), methods(Method::Naive));
        check(
            OPTIMIZERS,
            |v| json(serde_json::to_string(v).unwrap()),
            optimizers(OptimizerKind::Adam),
        );
        check(
            BINARIZE,
            |v| json(serde_json::to_string(v).unwrap()),
            binarize(Binarize::Threshold),
        );
    }
}
