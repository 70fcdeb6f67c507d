//! Tests of [`super::load`] and [`super::load_splits`] over every spec kind.

use std::path::Path;

use super::{cifar, idx, load, load_splits};
use crate::error::Result;

fn spec(kind: &str, p: &Path) -> String {
    format!("{kind}:{}", p.display())
}

#[test]
fn mnist_specs_keep_their_own_test_set() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    let (trx, _, tex, tey) = idx::tests::write_mnist(tmp.path());
    for kind in ["mnist", "fashion-mnist"] {
        let s = load_splits(&spec(kind, tmp.path()), 1)?;
        assert_eq!((s.train.len(), s.val.len(), s.test.len()), (3, 1, 3));
        assert_eq!(
            s.val.example(0),
            &trx[18..24].iter().map(|&b| b as u32).collect::<Vec<_>>()[..]
        );
        assert_eq!(s.test.labels, Some(tey.iter().map(|&b| b as u32).collect()));
        let all = load(&spec(kind, tmp.path()))?;
        assert_eq!((all.len(), all.num_values), (7, 256));
        assert_eq!(
            all.example(4),
            &tex[..6].iter().map(|&b| b as u32).collect::<Vec<_>>()[..]
        );
    }
    let b = load_splits(&spec("binarized-mnist", tmp.path()), 2)?;
    assert_eq!((b.train.len(), b.val.len(), b.test.num_values), (2, 2, 2));
    let want: Vec<u32> = tex.iter().map(|&v| (v >= 128) as u32).collect();
    assert_eq!(b.test.values, want);
    let e = load_splits(&spec("mnist", tmp.path()), 4).unwrap_err().to_string();
    assert!(e.contains("4 validation examples off a training set of 4"), "{e}");
    // A problem with the data names the data set, not "invalid config".
    assert!(
        e.starts_with(&spec("mnist", tmp.path())) && !e.contains("invalid config"),
        "{e}"
    );
    Ok(())
}

#[test]
fn cifar_png_and_npy_specs_load() -> Result<()> {
    let tmp = tempfile::tempdir().unwrap();
    cifar::tests::write_cifar(tmp.path());
    let s = load_splits(&spec("cifar10", tmp.path()), 5)?;
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (10, 5, 2));
    assert_eq!(s.test.image_shape, (3, 32, 32));

    let pngs = tmp.path().join("pngs");
    std::fs::create_dir(&pngs).unwrap();
    for i in 0..6u8 {
        let px = [i; 4];
        image::save_buffer(pngs.join(format!("{i}.png")), &px, 2, 2, image::ExtendedColorType::L8).unwrap();
    }
    let all = load(&spec("png", &pngs))?;
    assert_eq!((all.len(), all.example(5)), (6, &[5, 5, 5, 5][..]));
    let s = load_splits(&spec("png", &pngs), 99)?;
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (3, 1, 2));

    let npy = tmp.path().join("x.npy");
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    let h = "{'descr': '|u1', 'fortran_order': False, 'shape': (2, 1, 1), }\n";
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(&[7, 9]);
    std::fs::write(&npy, b).unwrap();
    assert_eq!(load(&spec("npy", &npy))?.values, vec![7, 9]);
    Ok(())
}

#[test]
fn digits_and_bad_specs_still_behave() {
    assert_eq!(load("digits").unwrap().len(), 1797);
    let s = load_splits("digits", 7).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (1000, 350, 447));
    let e = load("mnist:").unwrap_err().to_string();
    assert!(e.contains("names no directory after `mnist:`"), "{e}");
    let e = load("npy:").unwrap_err().to_string();
    assert!(e.contains("`npy:`"), "{e}");
    let e = load("/no/such/mnist").unwrap_err().to_string();
    assert!(e.contains("/no/such/mnist"), "{e}");
    let e = load("cifar10:/no/such/dir").unwrap_err().to_string();
    assert!(e.contains("/no/such/dir") && e.contains("not a directory"), "{e}");
    // an unknown prefix is a digits CSV path, as before
    let e = load("weird:thing.csv").unwrap_err().to_string();
    assert!(e.contains("weird:thing.csv"), "{e}");
}

/// A run's data spec is written with an absolute path (against the current directory): the same files from
/// anywhere later. The embedded set, a misspelt source and an empty path stay as given.
#[test]
fn specs_are_made_absolute_for_a_runs_config() {
    let cwd = std::env::current_dir().unwrap();
    let at = |p: &str| cwd.join(p).to_str().unwrap().to_owned();
    assert_eq!(super::absolute_spec("digits"), "digits");
    assert_eq!(super::absolute_spec("rows.csv"), at("rows.csv"));
    assert_eq!(super::absolute_spec("/data/rows.csv"), "/data/rows.csv");
    assert_eq!(super::absolute_spec("png:pics"), format!("png:{}", at("pics")));
    assert_eq!(super::absolute_spec("mnist:/data/mnist"), "mnist:/data/mnist");
    assert_eq!(super::absolute_spec("mnst:pics"), "mnst:pics");
    assert_eq!(super::absolute_spec("npy:"), "npy:");
}
