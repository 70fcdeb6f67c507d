//! f64s in the JSON training state that round-trip exactly. serde_json (without its `float_roundtrip`
//! feature) parses some numbers one unit in the last place off, so a resumed run's best validation NLL
//! — and with it `summary.json` — could differ in its last digit from an uninterrupted run's. These values
//! are written as strings in Rust's shortest round-trip form and parsed by Rust's exact parser; plain JSON
//! numbers (state files written before) are still read.

use serde::{Deserialize, Deserializer, Serializer};

#[derive(Deserialize)]
#[serde(untagged)]
enum Repr {
    Text(String),
    Number(f64),
}

fn parse<'de, D: Deserializer<'de>>(r: Repr) -> Result<f64, D::Error> {
    match r {
        Repr::Number(v) => Ok(v),
        Repr::Text(s) => s
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a number"))),
    }
}

pub fn serialize<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{v:?}"))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    parse::<D>(Repr::deserialize(d)?)
}

pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<Repr>::deserialize(d)?.map(parse::<D>).transpose()
    }
}
