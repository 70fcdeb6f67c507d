//! The codec: exact round trips for every family that steps and every file format, refusals of bad files,
//! determinism across threads, batch sizes and SIMD levels, and the committed golden files.

use std::path::Path;

use armory::codec::{compress, decompress, formats, Data, Format, Options};
use armory::models::{
    causal_conv, gated_pixelcnn, mlp, pixelcnn, rnn, wavenet, Arithmetic, Arm, ColourMixture, InputEncoding,
    ModelConfig, Network,
};
use armory::nn::exact::{force_simd, Simd};
use armory::Error;
use candle_core::{DType, Device, Tensor};

mod common;

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/codec");

fn conv(k: usize, d: usize, input: InputEncoding) -> ModelConfig {
    let net = causal_conv::Config {
        hidden: 8,
        kernel: 3,
        dilations: vec![1, 2, 1],
        layer_types: None,
        leaky_slope: 0.1,
    };
    ModelConfig::sequence(Network::CausalConv(net), k, d).with_input(input)
}

/// A small gated PixelCNN with a residual vertical stack, `colors` colours of `channels` each.
fn gated_colours(k: usize, h: usize, w: usize, colors: usize, channels: usize) -> ModelConfig {
    let net = gated_pixelcnn::Config {
        channels,
        first_kernel: 3,
        layers: 2,
        kernel: 3,
        head_hidden: channels.max(4),
        num_classes: None,
        vertical_residual: true,
    };
    ModelConfig::image(Network::GatedPixelcnn(net), k, h, w, colors)
}

fn gated(k: usize, h: usize, w: usize) -> ModelConfig {
    gated_colours(k, h, w, 1, 4)
}

fn pixelcnn(k: usize, h: usize, w: usize) -> ModelConfig {
    let net = pixelcnn::Config {
        hidden: 6,
        first_kernel: 3,
        blocks: 2,
        kernel: 3,
        head_hidden: 5,
    };
    ModelConfig::image(Network::Pixelcnn(net), k, h, w, 1).with_input(InputEncoding::Scaled)
}

/// Small members of every family with an exact stepper, on 3×4 images (or 12 positions), 5 values, with
/// either likelihood.
fn families() -> Vec<ModelConfig> {
    let seq = |net| ModelConfig::sequence(net, 5, 12);
    let rnn = |cell| {
        seq(Network::Rnn(rnn::Config {
            cell,
            hidden: 6,
            embedding: 3,
        }))
    };
    let mut conditional = gated(5, 3, 4);
    if let Network::GatedPixelcnn(c) = &mut conditional.network {
        c.num_classes = Some(3);
    }
    let mut pixel_mixture = gated_colours(5, 2, 2, 3, 6).with_mixture(2);
    if let Network::GatedPixelcnn(c) = &mut pixel_mixture.network {
        c.head_hidden = 4;
    }
    vec![
        conv(5, 12, InputEncoding::Raw),
        conv(5, 12, InputEncoding::OneHot),
        conv(5, 12, InputEncoding::Raw).with_mixture(2),
        seq(Network::Wavenet(wavenet::Config {
            residual_channels: 4,
            skip_channels: 3,
            kernel: 2,
            dilations: vec![1, 2, 4],
        })),
        rnn(rnn::Cell::Lstm),
        rnn(rnn::Cell::Gru).with_mixture(2),
        seq(Network::Mlp(mlp::Config { memory: 3, hidden: 7 })).with_input(InputEncoding::OneHot),
        pixelcnn(5, 3, 4),
        pixelcnn(5, 3, 4).with_mixture(2),
        gated(5, 3, 4),
        gated(5, 3, 4).with_mixture(3),
        conditional,
        // Colour, one mixture per colour: 3 × 2 × 2 values per example.
        gated_colours(5, 2, 2, 3, 6)
            .with_mixture(2)
            .with_colour_mixture(ColourMixture::PerColour),
        // PixelCNN++'s RGB pixel mixture: one network column per pixel, G and B from the head.
        pixel_mixture,
    ]
}

fn arm(cfg: &ModelConfig, seed: u64) -> Arm {
    common::random_arm(cfg, seed)
}

/// n examples of pseudo-random values (a fixed LCG), with labels for class-conditional models.
fn data_for(arm: &Arm, n: usize, seed: u64) -> Data {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    let k = arm.num_values();
    // Mostly small values, like pictures with a background.
    let values = (0..n * arm.dim()).map(|_| (next() % k).min(next() % k) as u8).collect();
    let labels = arm.num_classes().map(|c| (0..n).map(|i| (i % c) as u8).collect());
    Data {
        values,
        labels,
        dim: arm.dim(),
        format: Format::Raw,
    }
}

fn opts(chunk: usize, batch: usize) -> Options {
    Options { chunk, batch }
}

#[test]
fn every_family_round_trips_exactly_with_any_batch_size() {
    for cfg in families() {
        let arm = arm(&cfg, 1);
        let data = data_for(&arm, 7, 2);
        let file = compress(&arm, &data, &opts(3, 3), &|_| {}).unwrap();
        for batch in [1, 2, 3] {
            let back = decompress(&arm, &file, &opts(3, batch), &|_| {}).unwrap();
            assert_eq!(back, data, "{cfg:?} batch {batch}");
        }
        // Encoding with another batch size writes the same file.
        assert_eq!(compress(&arm, &data, &opts(3, 1), &|_| {}).unwrap(), file, "{cfg:?}");
    }
}

/// The exact stepper computes the same network as the fast one (to f32 rounding).
#[test]
fn exact_stepping_is_the_same_network() {
    for cfg in families() {
        let arm = arm(&cfg, 5);
        let data = data_for(&arm, 2, 3);
        let labels: Option<Vec<u32>> = data.labels.as_ref().map(|l| l.iter().map(|&v| v as u32).collect());
        let mut fast = arm
            .stepper_with(2, labels.as_deref(), Arithmetic::Fast)
            .unwrap()
            .unwrap();
        let mut exact = arm
            .stepper_with(2, labels.as_deref(), Arithmetic::Exact)
            .unwrap()
            .unwrap();
        for d in 0..arm.dim() {
            let prev: Option<Vec<u32>> =
                (d > 0).then(|| (0..2).map(|i| data.values[i * arm.dim() + d - 1] as u32).collect());
            let (a, b) = (
                fast.step(prev.as_deref()).unwrap(),
                exact.step(prev.as_deref()).unwrap(),
            );
            for (x, y) in a.iter().flatten().zip(b.iter().flatten()) {
                assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "{cfg:?} d={d}: {x} vs {y}");
            }
        }
    }
}

/// The bytes do not depend on the thread count, the SIMD level of the exact kernel, or whether the fast path
/// may use gemm (the exact path never does).
#[test]
fn files_are_the_same_with_any_threads_simd_level_or_gemm_setting() {
    let cfgs = [families()[1].clone(), families()[3].clone(), families()[9].clone()];
    for cfg in cfgs {
        let arm = arm(&cfg, 2);
        let data = data_for(&arm, 9, 4);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| compress(&arm, &data, &opts(2, 2), &|_| {}).unwrap())
        };
        let reference = run(1);
        assert_eq!(run(2), reference, "{cfg:?}: 2 threads");
        for level in [Simd::Portable, Simd::Avx2, Simd::Avx512] {
            force_simd(Some(level));
            assert_eq!(run(2), reference, "{cfg:?}: {level:?}");
        }
        force_simd(None);
        armory::nn::step::set_gemm(false);
        let without_gemm = run(2);
        armory::nn::step::set_gemm(true);
        assert_eq!(without_gemm, reference, "{cfg:?}: gemm off");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
        let back = pool.install(|| decompress(&arm, &reference, &opts(2, 1), &|_| {}).unwrap());
        assert_eq!(back, data);
    }
}

/// Every truncation, a flipped byte anywhere, another model and another version are refused, never decoded
/// into other data, never a panic.
#[test]
fn bad_files_are_refused() {
    let cfg = families()[8].clone();
    let a = arm(&cfg, 3);
    let data = data_for(&a, 5, 6);
    let file = compress(&a, &data, &opts(2, 2), &|_| {}).unwrap();
    for n in 0..file.len() {
        assert!(
            decompress(&a, &file[..n], &opts(2, 2), &|_| {}).is_err(),
            "truncated to {n}"
        );
    }
    for i in 0..file.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = file.clone();
            bad[i] ^= bit;
            match decompress(&a, &bad, &opts(2, 2), &|_| {}) {
                Err(_) => {}
                Ok(back) => assert_eq!(back, data, "byte {i} flipped decoded into other data"),
            }
        }
    }
    let other = arm(&cfg, 4);
    let e = decompress(&other, &file, &opts(2, 2), &|_| {}).unwrap_err();
    assert!(matches!(e, Error::CodecModelMismatch { .. }), "{e}");
    for version in [1, 3] {
        let mut other = file.clone();
        other[4] = version;
        let e = decompress(&a, &other, &opts(2, 2), &|_| {}).unwrap_err();
        assert!(
            matches!(e, Error::CodecVersion { found, .. } if found == version),
            "{e}"
        );
    }
    let mut body = file.clone();
    let last = body.len() - 1;
    body[last] ^= 0xff;
    body[last - 5] ^= 0x5a;
    assert!(decompress(&a, &body, &opts(2, 2), &|_| {})
        .map(|b| b == data)
        .unwrap_or(true));
    // Values the model cannot code.
    let mut big = data.clone();
    big.values[3] = 5;
    let e = compress(&a, &big, &opts(2, 2), &|_| {}).unwrap_err();
    assert!(matches!(e, Error::ValueOutOfRange { value: 5, .. }), "{e}");
    // A chunk size the header's 32 bits cannot hold is refused, not cut short into a file that does not read.
    let e = compress(&a, &data, &opts(1 << 32, 2), &|_| {}).unwrap_err();
    assert!(e.to_string().contains("above the container's limit"), "{e}");
}

/// The file costs about the model's NLL: ≤ NLL in bits + 1 % + the header (random weights here; the CLI test
/// checks a trained model).
#[test]
fn size_is_the_model_nll_plus_at_most_one_percent() {
    let cfg = conv(17, 64, InputEncoding::Raw);
    let arm = arm(&cfg, 8);
    let data = data_for(&arm, 40, 9);
    let file = compress(&arm, &data, &opts(64, 64), &|_| {}).unwrap();
    let x: Vec<u32> = data.values.iter().map(|&v| v as u32).collect();
    let x = Tensor::from_vec(x, (40, 64), &Device::Cpu).unwrap();
    let nll_bits = -arm.log_prob(&x).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() as f64 / 2f64.ln();
    let (_, header) = armory::codec::Header::read(&file).unwrap();
    let coded = (file.len() - header) as f64 * 8.0;
    assert!(
        coded <= nll_bits * 1.01 + 64.0,
        "{coded} bits coded, NLL {nll_bits} bits"
    );
    assert!(header < 100, "header {header} bytes");
}

/// A deterministic model with no transcendental functions in its weights (an LCG's multiples of 2^-12), so
/// that its fingerprint is the same everywhere.
fn golden_arm(cfg: &ModelConfig) -> Arm {
    let arm = Arm::new(cfg, 0, DType::F32, &Device::Cpu).unwrap();
    let mut s = 12345u64;
    for (_, var) in arm.params().vars() {
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) % 4096) as f32 / 4096.0 - 0.5
            })
            .collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    arm
}

fn golden_models() -> Vec<(&'static str, ModelConfig)> {
    vec![
        ("conv", conv(17, 64, InputEncoding::OneHot)),
        ("gated-mixture", gated(17, 8, 8).with_mixture(3)),
    ]
}

/// The first 8 digits of the embedded set's test split (rows 1350..1358), as a digits CSV.
fn golden_csv() -> Vec<u8> {
    let all = armory::data::digits::embedded().unwrap();
    let mut s = String::new();
    for i in 1350..1358 {
        for v in all.example(i) {
            s.push_str(&format!("{v},"));
        }
        s.push_str(&format!("{}\n", all.labels.as_ref().unwrap()[i]));
    }
    s.into_bytes()
}

/// The committed golden files decompress to the recorded digits, and compressing the digits again writes
/// them byte for byte: the coded probabilities are the same on this machine as where they were written.
/// (Rewrite them, after a deliberate change of the arithmetic, with `ARMORY_WRITE_GOLDEN=1`.)
#[test]
fn golden_files_decompress_to_the_recorded_digits() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("golden.csv");
    std::fs::write(&csv, golden_csv()).unwrap();
    assert_eq!(
        std::fs::read(Path::new(GOLDEN).join("golden.csv")).unwrap(),
        golden_csv()
    );
    let (data, note) = formats::read(&csv).unwrap();
    assert!(note.is_none());
    for (name, cfg) in golden_models() {
        let arm = golden_arm(&cfg);
        let path = Path::new(GOLDEN).join(format!("golden-{name}.arm"));
        let file = compress(&arm, &data, &opts(3, 3), &|_| {}).unwrap();
        if std::env::var_os("ARMORY_WRITE_GOLDEN").is_some() {
            std::fs::write(&path, &file).unwrap();
        }
        let golden = std::fs::read(&path).unwrap();
        let back = decompress(&arm, &golden, &opts(3, 2), &|_| {}).unwrap();
        let out = dir.path().join(format!("{name}.csv"));
        formats::write(&back, &out, false).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), golden_csv(), "{name}");
        assert_eq!(file, golden, "{name}: compressing again gives other bytes");
    }
}

/// Every file format comes back: CSV (byte-identical, gzipped input inflated), IDX and npy (byte-identical),
/// a PNG folder (pixel-identical, gray and RGB).
#[test]
fn every_format_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let round_trip = |arm: &Arm, input: &Path, out: &Path| -> Data {
        let (data, _) = formats::read(input).unwrap();
        let file = compress(arm, &data, &opts(4, 4), &|_| {}).unwrap();
        let back = decompress(arm, &file, &opts(4, 2), &|_| {}).unwrap();
        assert_eq!(back, data);
        formats::write(&back, out, false).unwrap();
        // Never overwritten without force.
        assert!(formats::write(&back, out, false).is_err());
        formats::write(&back, out, true).unwrap();
        data
    };
    // CSV, plain and gzipped.
    let digits = golden_arm(&golden_models()[0].1);
    std::fs::write(d.join("a.csv"), golden_csv()).unwrap();
    round_trip(&digits, &d.join("a.csv"), &d.join("a.out.csv"));
    assert_eq!(std::fs::read(d.join("a.out.csv")).unwrap(), golden_csv());
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &golden_csv()).unwrap();
    std::fs::write(d.join("a.csv.gz"), gz.finish().unwrap()).unwrap();
    round_trip(&digits, &d.join("a.csv.gz"), &d.join("b.out.csv"));
    assert_eq!(std::fs::read(d.join("b.out.csv")).unwrap(), golden_csv());

    // IDX, 5 images of 3×4 bytes, and npy (N, 3, 4), with a 256-value model.
    let bytes_arm = arm(&conv(256, 12, InputEncoding::Scaled), 1);
    let pixels: Vec<u8> = (0..60u32).map(|i| (i * 37 % 256) as u8).collect();
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 3, 0, 0, 0, 4];
    idx.extend_from_slice(&pixels);
    std::fs::write(d.join("x-idx3-ubyte"), &idx).unwrap();
    round_trip(&bytes_arm, &d.join("x-idx3-ubyte"), &d.join("x.out"));
    assert_eq!(std::fs::read(d.join("x.out")).unwrap(), idx);
    let npy = npy_bytes;
    let gray = npy("(5, 3, 4)", &pixels);
    std::fs::write(d.join("g.npy"), &gray).unwrap();
    round_trip(&bytes_arm, &d.join("g.npy"), &d.join("g.out.npy"));
    assert_eq!(std::fs::read(d.join("g.out.npy")).unwrap(), gray);
    // Colour npy (N, 2, 2, 3): the stored order is the model's, R, G, B per pixel.
    let colour_arm = arm(
        &gated_colours(256, 2, 2, 3, 6)
            .with_mixture(2)
            .with_colour_mixture(ColourMixture::PerColour),
        2,
    );
    let rgb = npy("(5, 2, 2, 3)", &pixels);
    std::fs::write(d.join("c.npy"), &rgb).unwrap();
    round_trip(&colour_arm, &d.join("c.npy"), &d.join("c.out.npy"));
    assert_eq!(std::fs::read(d.join("c.out.npy")).unwrap(), rgb);

    // PNG folders, gray 4×3 and RGB 2×2.
    for (name, arm, ct, w, h) in [
        ("gray", &bytes_arm, image::ExtendedColorType::L8, 4u32, 3u32),
        ("rgb", &colour_arm, image::ExtendedColorType::Rgb8, 2, 2),
    ] {
        let src = d.join(name);
        std::fs::create_dir(&src).unwrap();
        let per = pixels.len() / 5;
        for (i, p) in pixels.chunks(per).enumerate() {
            image::save_buffer(src.join(format!("{i:02}.png")), p, w, h, ct).unwrap();
        }
        let out = d.join(format!("{name}.out"));
        round_trip(arm, &src, &out);
        for i in 0..5 {
            let a = image::open(src.join(format!("{i:02}.png"))).unwrap();
            let b = image::open(out.join(format!("{i:02}.png"))).unwrap();
            assert_eq!(a.as_bytes(), b.as_bytes(), "{name} {i}");
            assert_eq!(a.color(), b.color());
        }
    }
}

/// A container whose kept IDX or `.npy` header disagrees with its data (forged, or damaged where the
/// checksum does not look) is refused as corrupt, and nothing is written: a rebuilt file would fit no reader.
#[test]
fn a_kept_header_that_disagrees_with_the_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let data = |format| Data {
        values: vec![7; 5 * 12],
        labels: None,
        dim: 12,
        format,
    };
    let idx = |n: u8, h: u8| vec![0, 0, 8, 3, 0, 0, 0, n, 0, 0, 0, h, 0, 0, 0, 4];
    formats::write(&data(Format::Idx { header: idx(5, 3) }), &out, false).unwrap();
    assert_eq!(std::fs::read(&out).unwrap().len(), 16 + 60);
    std::fs::remove_file(&out).unwrap();
    for (header, why) in [
        (idx(6, 3), "announces 6 examples of 12 values, the data are 5 of 12"),
        (idx(5, 2), "announces 5 examples of 8 values"),
        (idx(5, 3)[..12].to_vec(), "does not parse"),
        ([idx(5, 3), vec![0]].concat(), "17 bytes are not one IDX images header"),
    ] {
        let e = formats::write(&data(Format::Idx { header }), &out, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("corrupt") && e.contains(why), "{e}");
        assert!(!out.exists());
    }
    let npy = |shape: &str| {
        let mut h = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        [
            b"\x93NUMPY\x01\x00".to_vec(),
            (h.len() as u16).to_le_bytes().to_vec(),
            h.into_bytes(),
        ]
        .concat()
    };
    formats::write(
        &data(Format::Npy {
            header: npy("(5, 3, 4)"),
        }),
        &out,
        false,
    )
    .unwrap();
    std::fs::remove_file(&out).unwrap();
    let e = formats::write(
        &data(Format::Npy {
            header: npy("(4, 3, 5)"),
        }),
        &out,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("npy array header announces 4 examples of 15 values"), "{e}");
    assert!(!out.exists());
}

/// A write that fails (here: the output's parent is a file) names the output asked for, never the temporary
/// file or folder it was written through, for a single file and for a folder of PNGs alike.
#[test]
fn a_failed_write_names_the_output_not_its_temporary_file() {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("afile");
    std::fs::write(&parent, b"not a folder").unwrap();
    let (data, png) = (two_examples, two_pngs());
    for (format, name) in [(Format::Raw, "out.bin"), (png.clone(), "pngs")] {
        let out = parent.join(name);
        let e = formats::write(&data(format), &out, false).unwrap_err().to_string();
        assert!(e.contains(&out.display().to_string()), "{e}");
        assert!(!e.contains("armory-tmp"), "{e}");
    }
    // A missing parent folder is an error for PNGs too, as for every other output: not made on the way.
    let out = dir.path().join("missing").join("pngs");
    let e = formats::write(&data(png), &out, false).unwrap_err().to_string();
    assert!(e.contains(&out.display().to_string()), "{e}");
    assert!(!dir.path().join("missing").exists());
}

/// An existing output is replaced, with force, only by its own kind: a regular file by a file, a folder of
/// PNGs by PNGs. A pipe, a device, a dangling link, a file where PNGs go and a folder where a file goes are
/// refused before anything is written (a rename would replace a device such as /dev/full), and no
/// temporary file or folder is left behind.
#[test]
fn only_a_file_or_a_folder_of_pngs_is_replaced() {
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (data, png) = (two_examples, two_pngs());
    let fifo = d.join("fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let dangling = d.join("dangling");
    std::os::unix::fs::symlink(d.join("nowhere"), &dangling).unwrap();
    let file = d.join("file");
    std::fs::write(&file, b"keep").unwrap();
    let folder = d.join("folder");
    std::fs::create_dir(&folder).unwrap();
    std::fs::write(folder.join("notes.txt"), b"keep").unwrap();
    let pngs = d.join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    std::fs::write(pngs.join("old.png"), b"old").unwrap();
    let listing = || {
        let mut v: Vec<_> = std::fs::read_dir(d).unwrap().map(|e| e.unwrap().file_name()).collect();
        v.sort();
        v
    };
    let before = listing();
    let null = Path::new("/dev/null").to_path_buf();
    for (format, out, says) in [
        (Format::Raw, &fifo, "not a regular file"),
        (Format::Raw, &null, "not a regular file"),
        (Format::Raw, &dangling, "not a regular file"),
        (Format::Raw, &folder, "not a regular file"),
        (png.clone(), &fifo, "not a folder of PNGs"),
        (png.clone(), &dangling, "not a folder of PNGs"),
        (png.clone(), &file, "not a folder of PNGs"),
        (png.clone(), &folder, "other files than PNGs"),
    ] {
        let e = formats::write(&data(format), out, true).unwrap_err().to_string();
        assert!(e.contains(says), "{}: {e}", out.display());
        assert_eq!(
            listing(),
            before,
            "{}: a temporary was left, or something replaced",
            out.display()
        );
    }
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");
    // A dangling link exists: not replaced without force.
    let e = formats::write(&data(Format::Raw), &dangling, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("already exists"), "{e}");
    assert!(std::fs::symlink_metadata(&dangling).unwrap().file_type().is_symlink());
    // Their own kinds are replaced with force.
    formats::write(&data(Format::Raw), &file, true).unwrap();
    assert_eq!(std::fs::read(&file).unwrap(), vec![7; 8]);
    formats::write(&data(png), &pngs, true).unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&pngs)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["a.png", "b.png"]);
    assert_eq!(listing(), before);
}

/// A container naming its PNGs outside their folder (`../x.png`, `/tmp/x.png`), twice the same, or not as
/// PNGs is corrupt: refused when read, and never written (nothing appears outside the output folder).
#[test]
fn png_names_that_leave_their_folder_or_repeat_are_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let inside = d.join("inside");
    std::fs::create_dir(&inside).unwrap();
    let escape = d.join("escaped.png");
    for (names, says) in [
        (["a.png", "../escaped.png"], "not a plain .png file name"),
        (["a.png", escape.to_str().unwrap()], "not a plain .png file name"),
        (["a.png", ".."], "not a plain .png file name"),
        (["a.png", "b.txt"], "not a plain .png file name"),
        (["a.png", "a.png"], "two PNGs are named \"a.png\""),
    ] {
        let format = Format::PngFolder {
            names: names.map(String::from).to_vec(),
            colors: 1,
            height: 2,
            width: 2,
        };
        let e = Format::parse(format.tag(), &format.info()).unwrap_err().to_string();
        assert!(e.contains(says), "{names:?}: {e}");
        let e = formats::write(&two_examples(format), &inside.join("out"), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{names:?}: {e}");
        assert!(!escape.exists() && !inside.join("out").exists(), "{names:?}: written");
    }
    assert_eq!(std::fs::read_dir(&inside).unwrap().count(), 0, "a temporary was left");
}

/// Pictures of another shape with as many values as the model's (an npy of 4×16 pictures for an 8×8 model)
/// are refused, naming both shapes: coded, they round-tripped, with every neighbourhood wrong. The same
/// values as rows (a CSV, raw) have no shape to compare, and the model's own shape passes.
#[test]
fn pictures_of_another_shape_are_refused() {
    let arm = common::random_arm(&common::gated(3, 8, 8, None), 0);
    let npy = |shape: &str| Format::Npy {
        header: npy_bytes(shape, &[]),
    };
    let data = |format| Data {
        values: vec![1; 5 * 64],
        labels: None,
        dim: 64,
        format,
    };
    let e = compress(&arm, &data(npy("(5, 4, 16)")), &opts(2, 2), &|_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("4×16 pictures") && e.contains("takes 8×8 pictures"), "{e}");
    for format in [npy("(5, 8, 8)"), Format::DigitsCsv, Format::Raw] {
        compress(&arm, &data(format), &opts(2, 2), &|_| {}).unwrap();
    }
}

/// A version-1.0 `.npy` file of unsigned bytes with `shape` (Python's tuple, e.g. "(5, 3, 4)") and `data`.
fn npy_bytes(shape: &str, data: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    b
}

/// Two examples of 4 values (all 7) in `format`.
fn two_examples(format: Format) -> Data {
    Data {
        values: vec![7; 2 * 4],
        labels: None,
        dim: 4,
        format,
    }
}

/// The PNG folder format of two 2×2 gray pictures, `a.png` and `b.png`.
fn two_pngs() -> Format {
    Format::PngFolder {
        names: vec!["a.png".into(), "b.png".into()],
        colors: 1,
        height: 2,
        width: 2,
    }
}

/// A tiny model trained into `d/t`, and the embedded digits `examples` written as an IDX images file `name`
/// in `d` (8 × 8, the values alone): the run, the file and its bytes.
fn run_and_idx(
    d: &Path,
    examples: std::ops::Range<usize>,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    common::tiny_train(d, "t");
    let all = armory::data::digits::embedded().unwrap();
    let mut idx = vec![0, 0, 8, 3];
    idx.extend((examples.len() as u32).to_be_bytes());
    idx.extend([0, 0, 0, 8, 0, 0, 0, 8]);
    idx.extend(
        all.values[examples.start * 64..examples.end * 64]
            .iter()
            .map(|&v| v as u8),
    );
    let input = d.join(name);
    std::fs::write(&input, &idx).unwrap();
    (d.join("t"), input, idx)
}

/// No command writes over one of its own inputs, even with --force: the data it compresses, the container it
/// decompresses, the run's config and weights (each refused, each left as it was); and a missing folder
/// is an error naming the output, not its temporary file.
#[test]
fn no_command_writes_over_its_own_inputs() {
    use common::armory;
    use predicates::str::contains;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (run, input, idx) = run_and_idx(d, 0..10, "ten-idx3-ubyte");
    let (config, best) = (run.join("config.toml"), run.join("best.safetensors"));
    let before = |p: &Path| std::fs::read(p).unwrap();
    let (config_bytes, best_bytes) = (before(&config), before(&best));
    let coded = d.join("ten.arm");
    // `armory compress|decompress FROM -o TO --run RUN [--force]`.
    let codec = |command: &str, from: &Path, to: &Path, force: bool| {
        let mut c = armory();
        c.arg(command).arg(from).arg("-o").arg(to).arg("--run").arg(&run);
        if force {
            c.arg("--force");
        }
        c.assert()
    };
    for out in [&input, &best, &config] {
        codec("compress", &input, out, true)
            .failure()
            .stderr(contains("is an input of this command"));
    }
    armory()
        .args(["sample", "-n", "1", "--force", "--out"])
        .arg(&config)
        .arg("--run")
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("is an input of this command"));
    assert_eq!(before(&input), idx);
    assert_eq!((before(&config), before(&best)), (config_bytes, best_bytes));
    codec("compress", &input, &coded, false).success();
    let coded_bytes = before(&coded);
    codec("decompress", &coded, &coded, true)
        .failure()
        .stderr(contains("is an input of this command"));
    assert_eq!(before(&coded), coded_bytes);
    let missing = d.join("no-such-folder").join("x.arm");
    let out = codec("compress", &input, &missing, false)
        .failure()
        .stderr(contains(missing.display().to_string()));
    let err = String::from_utf8_lossy(&out.get_output().stderr).to_string();
    assert!(!err.contains("x.arm.tmp") && !err.contains("armory-tmp"), "{err}");
}

/// The command line on a briefly trained model: compress the digits test split (as IDX: the values alone),
/// within 1 % of the model's NLL plus the header; decompress byte-identical with 1 or 2 threads, another batch
/// size and the portable SIMD level; never overwrite without --force.
#[test]
fn cli_compresses_within_one_percent_of_a_trained_models_nll() {
    use common::armory;
    use predicates::prelude::*;
    use predicates::str::contains;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (run, input, idx) = run_and_idx(d, 1350..1797, "digits-test-idx3-ubyte"); // the test split
    let file = d.join("test.arm");
    let compress = || {
        armory()
            .arg("compress")
            .arg(&input)
            .arg("-o")
            .arg(&file)
            .arg("--run")
            .arg(&run)
            .assert()
    };
    compress().success().stdout(contains("447 examples (IDX images)"));
    compress().failure().stderr(contains("already exists"));
    let eval = armory().args(["eval", "--json", "--run"]).arg(&run).output().unwrap();
    let eval: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let nll_bits = eval["nll_nats"].as_f64().unwrap() * 447.0 / 2f64.ln();
    let bytes = std::fs::read(&file).unwrap();
    let (_, header) = armory::codec::Header::read(&bytes).unwrap();
    let coded = (bytes.len() - header) as f64 * 8.0;
    assert!(coded <= nll_bits * 1.01, "{coded} bits coded, NLL {nll_bits} bits");
    assert!(header < 100, "{header}-byte header");
    for (i, (threads, batch, simd)) in [("1", "64", "avx512"), ("2", "5", "portable")].into_iter().enumerate() {
        let out = d.join(format!("back{i}"));
        armory()
            .env("ARMORY_SIMD", simd)
            .args(["--threads", threads, "decompress"])
            .arg(&file)
            .arg("-o")
            .arg(&out)
            .args(["--batch", batch, "--run"])
            .arg(&run)
            .assert()
            .success();
        assert_eq!(std::fs::read(&out).unwrap(), idx);
    }
    armory()
        .arg("decompress")
        .arg(&file)
        .arg("-o")
        .arg(d.join("back0"))
        .arg("--run")
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("already exists"));
    let mut bad = bytes.clone();
    bad.truncate(bytes.len() - 3);
    std::fs::write(d.join("bad.arm"), bad).unwrap();
    armory()
        .arg("decompress")
        .arg(d.join("bad.arm"))
        .arg("-o")
        .arg(d.join("bad.out"))
        .arg("--run")
        .arg(&run)
        .assert()
        .failure()
        .stderr(contains("corrupt compressed file").and(contains("truncated")));
    assert!(!d.join("bad.out").exists());
}

/// Random bytes, bare or behind a valid magic, version and mode, are refused without a panic.
#[test]
fn random_bytes_are_refused() {
    let a = arm(&families()[0], 0);
    let mut s = 99u64;
    for i in 0..300 {
        let mut next = || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 33) as u8
        };
        let len = (next() as usize) * 2;
        let mut bytes: Vec<u8> = (0..len).map(|_| next()).collect();
        if i % 2 == 1 && bytes.len() >= 6 {
            bytes[..6].copy_from_slice(b"ARMZ\x01\x02");
        }
        assert!(decompress(&a, &bytes, &opts(2, 2), &|_| {}).is_err(), "case {i}");
        let _ = armory::codec::Format::parse(4, &bytes); // any result, but no panic
    }
}
