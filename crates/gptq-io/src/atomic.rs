//! Atomic outputs: every file or folder `gptq` writes is first written under a
//! temporary name beside its destination and renamed into place only when
//! complete, so an interrupted or failed run never leaves a partial output.

use crate::{Error, Result};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A temporary sibling path of `dest`: `.NAME.tmp-PID`.
pub fn temp_sibling(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = format!(".{name}.tmp-{}", std::process::id());
    match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.join(tmp),
        _ => PathBuf::from(tmp),
    }
}

/// Writes `bytes` to `dest` atomically (temp file, fsync, rename).
pub fn write_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_file_with(dest, |f| f.write_all(bytes))
}

/// Writes `dest` atomically, filling it through `fill`.
pub fn write_file_with(
    dest: &Path,
    fill: impl FnOnce(&mut std::io::BufWriter<fs::File>) -> std::io::Result<()>,
) -> Result<()> {
    let tmp = temp_sibling(dest);
    let run = || -> std::io::Result<()> {
        let f = fs::File::create(&tmp)?;
        let mut w = std::io::BufWriter::new(f);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, dest)
    };
    run().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        Error::io(dest, e)
    })
}

/// A folder being written: files go into a temporary sibling folder, which
/// [`AtomicDir::commit`] renames to the destination. Dropped uncommitted, the
/// temporary folder is removed.
pub struct AtomicDir {
    tmp: PathBuf,
    dest: PathBuf,
    overwrite: bool,
    done: bool,
}

impl AtomicDir {
    /// Starts writing `dest`. Fails if `dest` exists and `overwrite` is false.
    pub fn create(dest: &Path, overwrite: bool) -> Result<Self> {
        if dest.exists() && !overwrite {
            return Err(Error::io(
                dest,
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "output folder exists (pass --overwrite to replace it)",
                ),
            ));
        }
        if let Some(parent) = dest.parent() {
            if !parent.as_os_str().is_empty() && !parent.exists() {
                fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
        }
        let tmp = temp_sibling(dest);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            tmp,
            dest: dest.to_path_buf(),
            overwrite,
            done: false,
        })
    }

    /// The path of `name` inside the temporary folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.join(name)
    }

    /// Moves the finished folder into place.
    pub fn commit(mut self) -> Result<()> {
        if self.dest.exists() {
            if !self.overwrite {
                return Err(Error::io(
                    &self.dest,
                    std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "output folder appeared while writing",
                    ),
                ));
            }
            let old = temp_sibling(&self.dest.with_extension("old"));
            fs::rename(&self.dest, &old).map_err(|e| Error::io(&self.dest, e))?;
            fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
            let _ = fs::remove_dir_all(&old);
        } else {
            fs::rename(&self.tmp, &self.dest).map_err(|e| Error::io(&self.dest, e))?;
        }
        self.done = true;
        Ok(())
    }
}

impl Drop for AtomicDir {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_is_invisible_until_commit_and_removed_on_drop() {
        let root = tempfile::tempdir().unwrap();
        let dest = root.path().join("out");
        {
            let d = AtomicDir::create(&dest, false).unwrap();
            write_file(&d.path("a.txt"), b"x").unwrap();
            assert!(!dest.exists());
        }
        assert!(!dest.exists());
        assert_eq!(
            fs::read_dir(root.path()).unwrap().count(),
            0,
            "temp folder left behind"
        );
        let d = AtomicDir::create(&dest, false).unwrap();
        write_file(&d.path("a.txt"), b"x").unwrap();
        d.commit().unwrap();
        assert_eq!(fs::read(dest.join("a.txt")).unwrap(), b"x");
        assert!(AtomicDir::create(&dest, false).is_err());
    }
}
