//! `armory compress` and `armory decompress`: a data file coded with a trained model, and back.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use armory::codec::{self, formats, Options};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::model_source::ModelSource;

#[derive(Debug, clap::Args)]
pub struct CompressArgs {
    #[command(flatten)]
    model: ModelSource,
    /// The data: a digits CSV, an IDX images file, a uint8 `.npy` (each gzipped or plain), or a folder of PNGs.
    input: PathBuf,
    /// The compressed file (`.arm`).
    #[arg(short, long)]
    out: PathBuf,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Examples per chunk; chunks are independent streams, coded in parallel.
    #[arg(long, default_value_t = 64)]
    chunk: usize,
}

#[derive(Debug, clap::Args)]
pub struct DecompressArgs {
    /// The compressed file.
    input: PathBuf,
    /// The data file (or folder, for PNGs) to write.
    #[arg(short, long)]
    out: PathBuf,
    /// The model the file was compressed with.
    #[command(flatten)]
    model: ModelSource,
    /// Replace the output if it exists.
    #[arg(long)]
    force: bool,
    /// Examples stepped together (any value decodes the same file).
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

/// A progress bar on stderr for inputs of more than 1,000 examples.
fn progress(n: usize, what: &str) -> ProgressBar {
    if n <= 1000 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(n as u64), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(&format!("{what} {{bar:40}} {{pos}}/{{len}} examples ({{eta}})")) {
        bar.set_style(style);
    }
    bar
}

/// Refuses an `out` that is one of the command's inputs — the data or container read, the model's files —
/// even with `--force`.
fn check_not_input(out: &Path, input: &Path, model: &ModelSource) -> anyhow::Result<()> {
    let inputs: Vec<PathBuf> = std::iter::once(input.to_path_buf()).chain(model.inputs()).collect();
    Ok(armory::output::check_not_input(out, &inputs)?)
}

pub fn compress(a: CompressArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.chunk > 0, "--chunk must be at least 1");
    // The output is checked before any work: never over an existing file unless --force, never over an input.
    armory::output::check_new(&a.out, a.force)?;
    check_not_input(&a.out, &a.input, &a.model)?;
    let (_, arm) = a.model.load_arm("compress")?;
    let (data, note) = formats::read(&a.input)?;
    let n = data.len();
    let bar = progress(n, "compressing");
    let start = Instant::now();
    let opts = Options {
        chunk: a.chunk,
        batch: a.chunk,
    };
    let bytes = codec::compress(&arm, &data, &opts, &|k| bar.inc(k as u64))
        .with_context(|| format!("compressing {}", a.input.display()))?;
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    // Read back before anything is written: a container that does not read never replaces a file.
    let (header, body) = codec::Header::read(&bytes).context("the compressed container does not read back")?;
    armory::output::write_atomic(&a.out, &bytes)?;
    println!(
        "{}: {} ({}) → {}: {} bytes, {:.4} bits per dimension ({body}-byte header), {:.2} s, {:.0} examples/s",
        a.input.display(),
        super::count(n, "example"),
        data.format.name(),
        a.out.display(),
        bytes.len(),
        bytes.len() as f64 * 8.0 / (n * header.dim) as f64,
        secs,
        n as f64 / secs
    );
    if let Some(note) = note {
        println!("note: {note}");
    }
    Ok(())
}

pub fn decompress(a: DecompressArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.batch > 0, "--batch must be at least 1");
    check_not_input(&a.out, &a.input, &a.model)?;
    let bytes = armory::limits::read_file(&a.input, armory::limits::MAX_DATA_BYTES, "bytes of a compressed file")?;
    let (header, _) = codec::Header::read(&bytes).with_context(|| format!("reading {}", a.input.display()))?;
    // Before any decoding: what the output may replace (with --force: a file, or a folder of PNGs for PNGs;
    // never a device), from the format the header names. formats::write checks again when it writes.
    formats::check_replaceable(&a.out, header.format_tag == formats::PNG_FOLDER_TAG, a.force)?;
    let (_, arm) = a.model.load_arm("decompress")?;
    let bar = progress(header.count, "decompressing");
    let start = Instant::now();
    let opts = Options {
        chunk: header.chunk,
        batch: a.batch,
    };
    let data = codec::decompress(&arm, &bytes, &opts, &|k| bar.inc(k as u64))
        .with_context(|| format!("decompressing {}", a.input.display()))?;
    let secs = start.elapsed().as_secs_f64();
    bar.finish_and_clear();
    formats::write(&data, &a.out, a.force)?;
    println!(
        "{} → {}: {} ({}), {:.2} s, {:.0} examples/s",
        a.input.display(),
        a.out.display(),
        super::count(data.len(), "example"),
        data.format.name(),
        secs,
        data.len() as f64 / secs
    );
    Ok(())
}
