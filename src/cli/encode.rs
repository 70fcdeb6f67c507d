//! `armory encode`: a VAE's posterior means E[z | x] of a data split, written as npy or CSV.

use std::path::PathBuf;

use anyhow::{bail, Context};
use armory::data::Split;

use super::choices;
use super::model_source::{Model, ModelSource};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelSource,
    /// Dataset instead of the run's (see `armory train --help`); its quantization or binarization still
    /// applies.
    #[arg(long)]
    data: Option<String>,
    /// Which part of the data.
    #[arg(long, value_parser = choices::parser(choices::SPLITS), default_value = "test")]
    split: Split,
    /// Where to write the posterior means: FILE.npy (float32, N × latents) or FILE.csv (one example a line).
    #[arg(short, long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

/// Writes the posterior means E_q[z | x] of a VAE for every example of a split.
pub fn run(a: Args) -> anyhow::Result<()> {
    let npy = match a.out.extension().and_then(|e| e.to_str()) {
        Some("npy") => true,
        Some("csv") => false,
        _ => bail!("--out {}: name a .npy or a .csv file", a.out.display()),
    };
    armory::output::check_new(&a.out, a.force)?;
    armory::output::check_not_input(&a.out, &a.model.inputs())?;
    let (cfg, model) = a.model.load()?;
    let Model::Vae(vae) = model else {
        bail!("encode needs a latent-variable model (a run with a [latent] section); this one is an ARM")
    };
    let mut data = cfg.data;
    if let Some(spec) = &a.data {
        data.dataset = spec.clone();
    }
    let spec = data.dataset.clone();
    let splits = data.load().with_context(|| format!("loading {spec}"))?;
    armory::config::check_split_fits(&cfg.model, &splits, a.split, &spec)?;
    let part = splits.get(a.split);
    let means = vae.encode_means(part)?;
    let (n, l) = (part.len(), vae.latents());
    let bytes = if npy { npy_f32(&means, n, l) } else { csv(&means, l) };
    armory::output::write_atomic(&a.out, &bytes)?; // its errors name the file
    println!(
        "{n} posterior means of {l} latents ({} split of {spec}) → {}",
        a.split,
        a.out.display()
    );
    Ok(())
}

/// A version-1.0 `.npy` file of little-endian f32, C order, shape (n, l).
fn npy_f32(values: &[f32], n: usize, l: usize) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({n}, {l}), }}");
    // Magic (6) + version (2) + length (2) + header + '\n', padded with spaces to a multiple of 64.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    out
}

fn csv(values: &[f32], l: usize) -> Vec<u8> {
    let mut s = String::new();
    for row in values.chunks(l) {
        let line: Vec<String> = row.iter().map(|v| v.to_string()).collect();
        s.push_str(&line.join(","));
        s.push('\n');
    }
    s.into_bytes()
}

#[cfg(test)]
mod tests {
    /// The npy header is padded to 64 bytes and reads as numpy writes it; the values follow in order.
    #[test]
    fn npy_files_have_numpys_layout() {
        let b = super::npy_f32(&[1.0, -2.5, 0.0, 3.0, 4.0, 5.0], 2, 3);
        assert_eq!(&b[..8], b"\x93NUMPY\x01\x00");
        let len = u16::from_le_bytes([b[8], b[9]]) as usize;
        assert_eq!((10 + len) % 64, 0);
        let header = std::str::from_utf8(&b[10..10 + len]).unwrap();
        assert!(
            header.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }") && header.ends_with('\n')
        );
        let v: Vec<f32> = b[10 + len..]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(v, [1.0, -2.5, 0.0, 3.0, 4.0, 5.0]);
        assert_eq!(String::from_utf8(super::csv(&[1.0, 2.5], 2)).unwrap(), "1,2.5\n");
    }
}
