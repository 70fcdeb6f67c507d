//! Writing outputs safely: each file goes to a temporary file in its own directory, is flushed to disk and
//! renamed into place, so a reader never sees half a file and a failed write (a full device, a missing
//! directory) is an error, not a silent loss. Outputs the user names are never written over unless asked.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A name beside `path` for a temporary file or folder of this process: `path`'s file name (its first 200
/// bytes: a name near the file system's 255 stays writable) with `.<pid>-<n><suffix>` added, `n` counting
/// up. Ending in `.tmp`, a run folder's leftovers are found by it.
fn numbered(path: &Path, suffix: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let cut = (0..=name.len().min(200))
        .rev()
        .find(|&i| name.is_char_boundary(i))
        .unwrap_or(0);
    name.truncate(cut);
    path.with_file_name(format!("{name}.{}-{n}{suffix}", std::process::id()))
}

/// A temporary file beside `path`, created now and new: never a file that was there (an input named like
/// it, another process's), so nothing is written over or renamed away but what this process wrote.
fn fresh_temp(path: &Path) -> Result<(PathBuf, std::fs::File)> {
    loop {
        let tmp = numbered(path, ".tmp");
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(missing_folder(path, e)),
        }
    }
}

/// The error of a temporary file or folder that could not be made beside `path`: where its folder does not
/// exist, that, in words (none is made on the way).
fn missing_folder(path: &Path, e: std::io::Error) -> Error {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if e.kind() == std::io::ErrorKind::NotFound && !parent.is_dir() {
        let why = format!(
            "its folder {} does not exist (none is made on the way)",
            parent.display()
        );
        return Error::io(path, std::io::Error::other(why));
    }
    Error::io(path, e)
}

/// An empty folder beside `path`, created now and new (as [`fresh_temp`]); errors name `path`.
pub(crate) fn fresh_temp_dir(path: &Path) -> Result<PathBuf> {
    loop {
        let tmp = numbered(path, ".tmp");
        match std::fs::create_dir(&tmp) {
            Ok(()) => return Ok(tmp),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(missing_folder(path, e)),
        }
    }
}

/// Writes `bytes` to a fresh temporary file beside `path` ([`fresh_temp`]), flushed to the device, and
/// returns its name; errors name `path`, the file the user asked for, and leave no temporary file.
pub(crate) fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    let (tmp, mut f) = fresh_temp(path)?;
    match f.write_all(bytes).and_then(|_| f.sync_all()) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e))
        }
    }
}

/// Writes `bytes` to the new file `file` (in a folder this process made), flushed to the device; errors
/// name `path`, the file the user asked for.
pub(crate) fn write_synced(file: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| Error::io(path, e))?;
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
    let cleanup = |temps: &[PathBuf]| {
        for t in temps {
            let _ = std::fs::remove_file(t);
        }
    };
    let mut temps: Vec<PathBuf> = Vec::with_capacity(files.len());
    for (path, bytes) in files {
        match write_temp(path, bytes) {
            Ok(tmp) => temps.push(tmp),
            Err(e) => {
                cleanup(&temps);
                return Err(e);
            }
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
/// a regular file even then: a directory, a device such as `/dev/full`, or a symbolic link (the rename would
/// replace the link itself — `/dev/stdout` is one — not the file it points to).
pub fn check_new(path: &Path, overwrite: bool) -> Result<()> {
    if let Some(why) = not_replaceable(path) {
        return Err(Error::io(path, std::io::Error::other(why)));
    }
    if (path.exists() || path.is_symlink()) && !overwrite {
        return Err(Error::OutputExists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Why an existing `path` cannot be replaced by a file renamed onto it, even with `--force`: a symbolic link
/// or anything but a regular file. `None` for a regular file, or nothing there.
pub fn not_replaceable(path: &Path) -> Option<String> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    if meta.file_type().is_symlink() {
        return Some(link_refusal(path, "a regular file"));
    }
    (!meta.is_file()).then(|| "exists and is not a regular file; not replaced, even with --force".to_string())
}

/// The refusal of an output `path` that is a symbolic link, where `kind` ("a regular file") was asked for.
pub fn link_refusal(path: &Path, kind: &str) -> String {
    let to = std::fs::read_link(path)
        .map(|t| t.display().to_string())
        .unwrap_or_default();
    format!(
        "already exists as a symbolic link (to {to}), not {kind}; not replaced, even with --force: name the \
         target itself, or a new path"
    )
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

    /// A file name near the file system's limit of 255 bytes is written: its temporary file's name is cut.
    #[test]
    fn a_name_near_the_limit_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(format!("{}é.csv", "a".repeat(248)));
        write_atomic(&p, b"x").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// A symbolic link is not an output, even with --force, whatever it points to (a regular file, nothing);
    /// and a write touches no file but its own temporary file (made new) and its output.
    #[cfg(unix)]
    #[test]
    fn links_are_refused_and_writes_touch_no_other_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.csv");
        std::fs::write(&target, b"kept").unwrap();
        for (link, to) in [("link.csv", target.clone()), ("dangling.csv", dir.path().join("none"))] {
            let link = dir.path().join(link);
            std::os::unix::fs::symlink(&to, &link).unwrap();
            for force in [false, true] {
                let e = check_new(&link, force).unwrap_err().to_string();
                assert!(e.contains("symbolic link") && e.contains("even with --force"), "{e}");
            }
        }
        let out = dir.path().join("x.png");
        // The name earlier versions wrote through (an input of the command could be called so).
        let named_like = dir.path().join("x.png.tmp");
        std::fs::write(&named_like, b"not ours").unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        assert_eq!(std::fs::read(&named_like).unwrap(), b"not ours");
        assert_eq!(std::fs::read(&target).unwrap(), b"kept");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            5,
            "a temporary file was left"
        );
    }
}
