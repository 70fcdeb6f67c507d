//! Writing outputs safely: each file goes to a temporary file in its own directory, is flushed to disk and
//! renamed into place, so a reader never sees half a file and a failed write (a full device, a missing
//! directory) is an error, not a silent loss. Outputs the user names are never written over unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The temporary file a write of `path` goes through: `path` with `.tmp` added to its extension.
pub fn temp_path(path: &Path) -> PathBuf {
    path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ))
}

/// Writes `bytes` to `tmp`, flushed to the device; errors name `path`, the file the user asked for.
pub(crate) fn write_synced(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::File::create(tmp).map_err(|e| Error::io(path, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| Error::io(path, e))
}

/// Writes a file through a temporary file and a rename, so readers never see half of it; on failure the
/// temporary file is removed and the old file (if any) is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_all_atomic(&[(path, bytes)])
}

/// Writes several files all or nothing, as far as a file system allows: every file is written to its
/// temporary file first; only when all are written are they renamed into place. On an error, the temporary
/// files are removed, and files already renamed that did not exist before are removed too.
pub fn write_all_atomic(files: &[(&Path, &[u8])]) -> Result<()> {
    let temps: Vec<PathBuf> = files.iter().map(|(p, _)| temp_path(p)).collect();
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    for ((path, bytes), tmp) in files.iter().zip(&temps) {
        if let Err(e) = write_synced(tmp, path, bytes) {
            cleanup(&temps);
            return Err(e);
        }
    }
    let existed: Vec<bool> = files.iter().map(|(p, _)| p.exists()).collect();
    for (i, ((path, _), tmp)) in files.iter().zip(&temps).enumerate() {
        if let Err(e) = std::fs::rename(tmp, path) {
            cleanup(&temps[i..]);
            for ((p, _), &was) in files[..i].iter().zip(&existed) {
                if !was {
                    let _ = std::fs::remove_file(p);
                }
            }
            return Err(Error::io(path, e));
        }
    }
    Ok(())
}

/// Refuses to write over an existing `path` unless `overwrite` (the CLI's `--force`), and over anything but
/// a regular file even then (a directory, a device such as `/dev/full`: the rename would replace it).
pub fn check_new(path: &Path, overwrite: bool) -> Result<()> {
    let exists = path.exists() || path.is_symlink();
    if exists && !overwrite {
        return Err(Error::OutputExists {
            path: path.to_path_buf(),
        });
    }
    if exists && !path.is_file() {
        return Err(Error::io(
            path,
            std::io::Error::other("exists and is not a regular file; not replaced, even with --force"),
        ));
    }
    Ok(())
}

/// Refuses an output that is one of the command's own inputs (a data file, a container, a run's config or
/// weights), even with `--force`: replacing it would destroy what is being read.
pub fn check_not_input(out: &Path, inputs: &[PathBuf]) -> Result<()> {
    match inputs.iter().find(|input| same_file(out, input)) {
        Some(input) => Err(Error::io(
            out,
            std::io::Error::other(format!(
                "is an input of this command ({}); not replaced, even with --force",
                input.display()
            )),
        )),
        None => Ok(()),
    }
}

/// Whether two output paths name the same file (as given, or once resolved where they exist).
pub fn same_file(a: &Path, b: &Path) -> bool {
    if a == b {
        return true;
    }
    let resolve = |p: &Path| -> Option<PathBuf> {
        let name = p.file_name()?;
        let parent = match p.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let joined = parent.canonicalize().ok()?.join(name);
        Some(joined.canonicalize().unwrap_or(joined)) // through a symlink, where the file exists
    };
    matches!((resolve(a), resolve(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_nothing_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("a.png");
        let bad = dir.path().join("no/such/dir/b.csv");
        let e = write_all_atomic(&[(&ok, b"x"), (&bad, b"y")]).unwrap_err().to_string();
        assert!(e.contains("no/such/dir/b.csv"), "{e}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "something was left behind"
        );
        write_all_atomic(&[(&ok, b"x")]).unwrap();
        assert_eq!(std::fs::read(&ok).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn existing_files_are_kept_unless_overwrite_and_aliases_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.png");
        check_new(&p, false).unwrap();
        std::fs::write(&p, b"old").unwrap();
        let e = check_new(&p, false).unwrap_err().to_string();
        assert!(e.contains("x.png") && e.contains("--force"), "{e}");
        check_new(&p, true).unwrap();
        let e = check_new(dir.path(), true).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let e = check_new(Path::new("/dev/null"), true).unwrap_err().to_string();
        assert!(e.contains("/dev/null") && e.contains("not a regular file"), "{e}");
        assert!(same_file(&p, &dir.path().join("./x.png")));
        let inputs = [dir.path().join("a.csv"), dir.path().join("./x.png")];
        let e = check_not_input(&p, &inputs).unwrap_err().to_string();
        assert!(
            e.contains("is an input of this command") && e.contains("even with --force"),
            "{e}"
        );
        check_not_input(&dir.path().join("y.png"), &inputs).unwrap();
        assert!(!same_file(&p, &dir.path().join("y.png")));
    }
}
