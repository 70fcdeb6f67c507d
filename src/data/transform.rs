//! Transforms of a whole dataset: binarizing (MNIST → binarized MNIST), quantizing to fewer values,
//! joining two sets and splitting off a validation set. Labels and picture shapes are kept.

use rand::{Rng, SeedableRng};

use super::Dataset;
use crate::error::{Error, Result};

/// Values at or above `threshold` become 1, the rest 0 (`num_values = 2`); MNIST with 128 gives the usual
/// deterministically binarized MNIST.
pub fn binarize_threshold(ds: &Dataset, threshold: u32) -> Dataset {
    Dataset {
        values: ds.values.iter().map(|&v| (v >= threshold) as u32).collect(),
        labels: ds.labels.clone(),
        num_values: 2,
        ..*ds
    }
}

/// Each value v becomes 1 with probability p = v / (K − 1) (v / 255 for MNIST), else 0 (`num_values = 2`):
/// stochastically binarized MNIST. One draw of `ChaCha8Rng::seed_from_u64(seed)` per value, in storage order,
/// so a seed gives the same set on every machine.
pub fn binarize_stochastic(ds: &Dataset, seed: u64) -> Result<Dataset> {
    if ds.num_values < 2 {
        return Err(Error::Config(format!(
            "cannot binarize stochastically a dataset with {} value(s); it needs at least 2",
            ds.num_values
        )));
    }
    let max = (ds.num_values - 1) as f64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Ok(Dataset {
        values: ds
            .values
            .iter()
            .map(|&v| (rng.random::<f64>() < v as f64 / max) as u32)
            .collect(),
        labels: ds.labels.clone(),
        num_values: 2,
        ..*ds
    })
}

/// Maps values 0..K−1 to 0..levels−1 as ⌊v · levels / K⌋ (K = `num_values`; 256 → 16 keeps the high 4 bits).
/// `levels` must be in 2..=K.
pub fn quantize(ds: &Dataset, levels: usize) -> Result<Dataset> {
    let k = ds.num_values;
    if levels < 2 || levels > k {
        return Err(Error::Config(format!(
            "cannot quantize {k} values to {levels} levels; the levels must be in 2..={k}"
        )));
    }
    Ok(Dataset {
        values: ds
            .values
            .iter()
            .map(|&v| (v as u64 * levels as u64 / k as u64) as u32)
            .collect(),
        labels: ds.labels.clone(),
        num_values: levels,
        ..*ds
    })
}

/// Pictures with C > 1 channels from channel-major `[C, H, W]` (as the files store them) to pixel-major
/// `[H, W, C]`: each pixel's channels in turn (R, G, B), the raster order in which an ARM generates them
/// (the models' [`crate::models::Ordering`]).
/// Gray sets come back as they are, without a copy.
pub fn to_pixel_major(ds: Dataset) -> Dataset {
    let (c, h, w) = ds.image_shape;
    if c <= 1 || c * h * w != ds.dim {
        return ds;
    }
    let order = crate::models::Ordering {
        height: h,
        width: w,
        colors: c,
    };
    let mut values = vec![0; ds.values.len()];
    for (x, out) in ds.values.chunks(ds.dim).zip(values.chunks_mut(ds.dim)) {
        x.iter()
            .enumerate()
            .for_each(|(i, &v)| out[order.from_channel_major(i)] = v);
    }
    Dataset { values, ..ds }
}

/// `a` followed by `b` (e.g. a train and a test set as one); both must have the same shape and values.
/// The result is labelled only when both are.
pub fn concat(a: &Dataset, b: &Dataset) -> Result<Dataset> {
    if (a.dim, a.num_values, a.image_shape) != (b.dim, b.num_values, b.image_shape) {
        return Err(Error::Invalid(format!(
            "cannot join datasets of {} values of {} kinds shaped {:?} and of {} values of {} kinds shaped {:?}",
            a.dim, a.num_values, a.image_shape, b.dim, b.num_values, b.image_shape
        )));
    }
    let labels = match (&a.labels, &b.labels) {
        (Some(x), Some(y)) => Some([&x[..], &y[..]].concat()),
        _ => None,
    };
    Ok(Dataset {
        values: [&a.values[..], &b.values[..]].concat(),
        labels,
        ..*a
    })
}

/// `(train, val)`: the last `n_val` examples by position become the validation set, no shuffling.
/// `n_val` must leave at least one training example.
pub fn split_off_validation(train: &Dataset, n_val: usize) -> Result<(Dataset, Dataset)> {
    let n = train.len();
    if n_val == 0 {
        return Err(Error::Config(
            "a validation set of 0 examples: early stopping needs at least 1 (validation, --validation)".into(),
        ));
    }
    if n_val >= n {
        return Err(Error::Config(format!(
            "cannot split {n_val} validation examples off a training set of {n}; it must keep at least one"
        )));
    }
    Ok((train.slice(0..n - n_val), train.slice(n - n_val..n)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grays(values: Vec<u32>, num_values: usize) -> Dataset {
        let n = values.len() / 4;
        Dataset {
            values,
            labels: Some((0..n as u32).collect()),
            dim: 4,
            num_values,
            image_shape: (1, 2, 2),
        }
    }

    #[test]
    fn binarize_threshold_splits_at_the_threshold() {
        let ds = grays(vec![0, 127, 128, 255, 1, 200, 129, 3], 256);
        let b = binarize_threshold(&ds, 128);
        assert_eq!(b.values, vec![0, 0, 1, 1, 0, 1, 1, 0]);
        assert_eq!((b.num_values, b.dim, b.image_shape), (2, 4, (1, 2, 2)));
        assert_eq!(b.labels, ds.labels);
    }

    #[test]
    fn binarize_stochastic_follows_the_intensity_and_the_seed() -> Result<()> {
        let n = 4000;
        let values: Vec<u32> = (0..n * 4).map(|i| [0, 64, 191, 255][i % 4]).collect();
        let ds = grays(values, 256);
        let a = binarize_stochastic(&ds, 7)?;
        assert_eq!(a.num_values, 2);
        assert_eq!(a.values, binarize_stochastic(&ds, 7)?.values);
        assert_ne!(a.values, binarize_stochastic(&ds, 8)?.values);
        for (pos, p) in [(0, 0.0), (1, 64.0 / 255.0), (2, 191.0 / 255.0), (3, 1.0)] {
            let ones = (0..n).filter(|&i| a.example(i)[pos] == 1).count() as f64 / n as f64;
            assert!((ones - p).abs() < 0.03, "pixel {pos}: {ones} ones, expected {p}");
        }
        let e = binarize_stochastic(&grays(vec![0; 4], 1), 0).unwrap_err().to_string();
        assert!(e.contains("at least 2"), "{e}");
        Ok(())
    }

    #[test]
    fn quantize_takes_the_floor_of_v_levels_over_k() -> Result<()> {
        let ds = grays(vec![0, 15, 16, 255, 128, 127, 31, 32], 256);
        let q = quantize(&ds, 16)?;
        assert_eq!(q.values, vec![0, 0, 1, 15, 8, 7, 1, 2]);
        assert_eq!(q.num_values, 16);
        let q = quantize(&grays(vec![0, 1, 2, 3], 4), 3)?;
        assert_eq!(q.values, vec![0, 0, 1, 2]);
        assert_eq!(quantize(&ds, 256)?.values, ds.values);
        let e = quantize(&ds, 257).unwrap_err().to_string();
        assert!(e.contains("256 values to 257 levels"), "{e}");
        assert!(quantize(&ds, 1).is_err());
        Ok(())
    }

    #[test]
    fn split_off_validation_takes_the_last_examples() -> Result<()> {
        let ds = grays((0..20).collect(), 256);
        let (train, val) = split_off_validation(&ds, 2)?;
        assert_eq!((train.len(), val.len()), (3, 2));
        assert_eq!(val.example(0), &[12, 13, 14, 15]);
        assert_eq!(train.labels, Some(vec![0, 1, 2]));
        assert_eq!(val.labels, Some(vec![3, 4]));
        let e = split_off_validation(&ds, 0).unwrap_err().to_string();
        assert!(e.contains("0 examples"), "{e}");
        let e = split_off_validation(&ds, 5).unwrap_err().to_string();
        assert!(e.contains("5 validation examples off a training set of 5"), "{e}");
        Ok(())
    }

    #[test]
    fn concat_joins_alike_sets_only() -> Result<()> {
        let a = grays((0..8).collect(), 256);
        let b = grays((8..12).collect(), 256);
        let c = concat(&a, &b)?;
        assert_eq!((c.len(), c.values), (3, (0..12).collect::<Vec<_>>()));
        assert_eq!(c.labels, Some(vec![0, 1, 0]));
        let e = concat(&a, &grays(vec![0; 4], 2)).unwrap_err().to_string();
        assert!(e.contains("cannot join"), "{e}");
        Ok(())
    }

    #[test]
    fn colour_pictures_become_pixel_major() {
        // One 2-pixel RGB picture, channel-major: R = (1, 2), G = (3, 4), B = (5, 6).
        let ds = Dataset {
            values: vec![1, 2, 3, 4, 5, 6],
            labels: Some(vec![7]),
            dim: 6,
            num_values: 8,
            image_shape: (3, 1, 2),
        };
        let p = to_pixel_major(ds);
        assert_eq!(p.values, vec![1, 3, 5, 2, 4, 6]);
        assert_eq!((p.labels, p.image_shape), (Some(vec![7]), (3, 1, 2)));
    }
}
